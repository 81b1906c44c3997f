"""The ``compare`` section (``skray compare``) and its entries: each method a kind or a mapping of
method keys, with its own lr; the labels that tell entries apart."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from skray.config.messages import format_error
from skray.config.method import MethodConfig, MethodKind
from skray.config.search import IntRange, LogRange
from skray.config.section import Section


class CompareTuneConfig(Section):
    """A search per method before the seeds, the same budget for each, so no method is compared at a
    learning rate that suits another."""

    trials: int = Field(
        ge=1,
        description="Optuna trials each method gets (TPE, its start-up spread over the ranges; ASHA stops weak ones)",
    )
    lr: LogRange | None = Field(
        default=None,
        description="The learning-rate range every method searches, log-uniformly; unset: each kind its own "
        "(skray.config.LR_RANGES, docs/GUIDE.md), and an entry's own lr: {low, high} overrides both",
    )
    prefix_length: IntRange | None = Field(
        default=None,
        description="The range of m searched too, by the methods that have virtual positions; unset: "
        "method.prefix_length",
    )


class CompareConfig(Section):
    """What ``skray compare`` runs: methods x seeds on the same data, steps and batch size.

    A method is a kind (``lora``) or a mapping of method keys that override the ``method``
    section for that entry (``{kind: sk_prefix, head: linear}``), plus optionally its own ``lr``
    (methods differ in the step size they need; everything else stays the same); with ``tune``
    that ``lr`` is the range its search covers, ``{low, high}``.
    """

    methods: list[MethodKind | dict[str, Any]] = Field(
        min_length=1,
        description="The methods to run: a kind (lora), or method keys overriding the method section plus an "
        "optional lr ({kind: sk_prefix, head: linear}); with compare.tune, lr is a range {low, high}",
    )
    seeds: list[int] = Field(
        default=[0, 1, 2],
        min_length=1,
        description="train.seed values each method runs with; more seeds give a tighter mean ± sd",
    )
    target_accuracy: float = Field(
        default=0.8, gt=0, le=1, description="steps_to_target counts steps until validation reaches this"
    )
    pack: Literal["auto"] | Annotated[int, Field(ge=1, le=64)] = Field(
        default="auto",
        description="Trials trained at once over one shared frozen backbone (a slot), as search.pack; the methods "
        "that train the backbone (lora, full_finetune) run solo beside the slots",
    )
    tune: CompareTuneConfig | None = Field(
        default=None,
        description="Tune every method first (its own Optuna search, same budget), then run its best setting "
        "with every seed; unset: each method at its lr as given",
    )

    @model_validator(mode="after")
    def _distinct(self) -> CompareConfig:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("compare.seeds must be distinct")
        return self


def entry_lr(entry: str | dict[str, Any], default: float) -> Any:
    """A compare entry's own learning rate, else the train section's."""
    return entry.get("lr", default) if isinstance(entry, dict) else default


def compare_labels(entries: list[str | dict[str, Any]], default_lr: float) -> list[str]:
    """A unique, readable name per compare entry, saying what differs: ``lora``,
    ``sk_prefix(head=linear)``, and ``lora(lr=0.002)`` where entries differ only in learning rate.
    Two entries that would run the same thing are a config error."""

    def name(entry: str | dict[str, Any], with_lr: bool) -> str:
        if isinstance(entry, str):
            entry = {"kind": entry}
        rest = [f"{k}={v}" for k, v in entry.items() if k not in ("kind", "lr")]
        if with_lr:
            lr = entry_lr(entry, default_lr)
            rest.append(f"lr={lr['low']:g}-{lr['high']:g}" if isinstance(lr, dict) else f"lr={lr:g}")
        return f"{entry['kind']}({','.join(rest)})" if rest else entry["kind"]

    plain = [name(e, with_lr=False) for e in entries]
    labels = [name(e, with_lr=plain.count(p) > 1) for e, p in zip(entries, plain, strict=True)]
    twice = next((label for label in labels if labels.count(label) > 1), None)
    if twice:
        raise ValueError(
            f"compare.methods: two entries both run {twice!r}; remove one or make them differ (e.g. in lr)"
        )
    return labels


def method_run_name(name: str, label: str) -> str:
    """A run's name for one method of the comparison ``name`` (its label made safe for a folder name):
    compare.tune's per-method searches and a comparison run a method at a time name their runs so."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{name}-{label}").strip("_")


def method_variant(base: MethodConfig, entry: str | dict[str, Any]) -> MethodConfig:
    """The ``method`` section with one compare entry applied; a probe always gets a linear head."""
    update = {"kind": entry} if isinstance(entry, str) else {k: v for k, v in entry.items() if k != "lr"}
    if update.get("kind") == "linear_probe":
        update.setdefault("head", "linear")
    try:
        return MethodConfig.model_validate({**base.model_dump(), **update})
    except ValidationError as err:
        raise ValueError(f"compare.methods entry {entry!r}: method.{format_error(err, MethodConfig)}") from None
