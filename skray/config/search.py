"""The ``search`` section (``skray tune``): what Optuna samples, how, what it optimises, and when ASHA
stops a trial."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from skray.config.data import selection_metric
from skray.config.method import HeadKind, MethodKind
from skray.config.section import MAX_PREFIX_LENGTH, Section, refuse_retired
from skray.errors import ConfigError


class IntRange(Section):
    """An integer range to search, both ends included."""

    low: int = Field(ge=1, description="The smallest value tried (included)")
    high: int = Field(ge=1, description="The largest value tried (included)")

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class LogRange(Section):
    """A positive range searched log-uniformly (as fine near low as near high)."""

    low: float = Field(gt=0, description="The lower end of the range")
    high: float = Field(gt=0, le=1.0, description="The upper end of the range, above low")

    @model_validator(mode="after")
    def _ordered(self) -> LogRange:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class ScreenConfig(Section):
    """A zero-shot screen before the search: every wording is scored at step 0 (no training), and
    only the best ``keep`` reach Optuna, so a long list of candidates costs an evaluation each
    instead of a trial each."""

    keep: int = Field(ge=1, description="Wordings the screen passes on to the search: the best zero-shot scores")


class SearchConfig(Section):
    """What Optuna searches, how it samples, what it optimises, and when ASHA stops a trial early.

    Every sampler is seeded with ``seed``. ``tpe`` and ``gp`` sample at random until
    ``startup_trials`` trials have finished, then model them; ``nsga2`` breeds generations of
    ``startup_trials`` trials (its population, at least 2), the first one random; ``random`` never
    models; ``grid`` tries, in a seeded order, points of every wording x the low, middle and high
    prefix length x the low, geometric middle and high learning rate (num_trials may not exceed
    that grid). ``objectives`` are result columns, each maximised or minimised; the selection
    metric (``best_val_acc``, ``best_val_f1`` for token classification) must be one of them with
    max: ASHA stops trials by it. A trial ASHA stopped is told to Optuna as pruned, never with the
    scores it had when stopped. ``wordings_file`` is read once, when the config is validated: its
    sentences join ``wordings`` and the path is dropped, so experiment.json records the sentences
    and the trials never need the file.
    """

    # Result columns every report carries, with the direction that is better. The test scores are
    # left out on purpose: choosing by them would fit the test set.
    OBJECTIVES: ClassVar[dict[str, str]] = {
        "best_val_acc": "max",
        "best_val_f1": "max",
        "best_val_precision": "max",  # token classification only
        "best_val_recall": "max",  # token classification only
        "trainable_params": "min",
        "train_s": "min",
        "samples_per_s": "max",
        "tokens_per_s": "max",
        "steady_samples_per_s": "max",
        "steady_tokens_per_s": "max",
        "time_to_first_step_s": "min",
        "peak_mem_mb": "min",
        "est_mem_mb": "min",
        "param_bytes_per_worker": "min",
        "peak_param_bytes_per_worker": "min",
        "checkpoint_bytes": "min",
    }

    num_trials: int = Field(
        default=4, ge=1, description="Trials Optuna samples, each a training run that ASHA may stop early"
    )
    wordings: list[str] = Field(
        min_length=1, description="The semantic prompts Optuna chooses among (method.wording of each trial)"
    )
    wordings_file: str | None = Field(
        default=None,
        description="A text file of more wordings, one per line (blank lines and # comments skipped; a path "
        "relative to the working directory); they join search.wordings when the config is read",
    )
    screen: ScreenConfig | None = Field(
        default=None, description="Score every wording zero-shot first and search only the best screen.keep"
    )
    prefix_length: IntRange = Field(description="The range of method.prefix_length (m) Optuna samples from")
    lr: LogRange = Field(description="The range of train.lr Optuna samples from, log-uniformly")
    kinds: list[MethodKind] | None = Field(
        default=None,
        min_length=2,
        description="Method kinds Optuna chooses among (e.g. [sk_prefix, sk_prompt]); each kind is given only the "
        "parameters it reads; unset: method.kind alone",
    )
    heads: list[HeadKind] | None = Field(
        default=None,
        min_length=2,
        description="Heads Optuna chooses among, each tried once first; unset: verbalizer, linear and "
        "word_linear where the config names no method.head (a decoder's classification), else method.head alone",
    )
    adapter_rank: IntRange | None = Field(
        default=None,
        description="The range of method.adapter_rank Optuna samples from (log-uniformly; SK adapters and LoRA); "
        "unset: method.adapter_rank",
    )
    sampler: Literal["tpe", "gp", "random", "nsga2", "grid"] = Field(
        default="tpe",
        description="Optuna's sampler: tpe, gp (Gaussian process), random, nsga2 (genetic, for several "
        "objectives) or grid (every wording x 3 prefix lengths x 3 learning rates)",
    )
    startup_trials: int | None = Field(
        default=None,
        ge=1,
        description="Finished trials tpe and gp sample at random before they model (nsga2: its population); "
        "unset: a quarter of num_trials, at least 2",
    )
    startup_points: Literal["random", "spread"] = Field(
        default="random",
        description="How tpe and gp place their start-up trials: random draws, or spread evenly over each "
        "numeric range (a Latin hypercube), so a short search cannot leave half a range untried",
    )
    objectives: dict[str, Literal["max", "min"]] | None = Field(
        default=None,
        description="Result columns Optuna optimises, e.g. {best_val_acc: max, trainable_params: min}, or a "
        "list of names in their natural direction; unset: the selection metric (best_val_acc) alone",
    )
    grace_period: int = Field(default=2, ge=1, description="Evaluations before ASHA may stop a trial")
    reduction_factor: int = Field(
        default=2,
        ge=2,
        description="ASHA keeps 1 in this many trials at each rung; higher stops weak trials sooner",
    )
    seed: int = Field(default=0, description="Seed of Optuna's sampler, so a search samples the same trials again")
    pack: Literal["auto"] | Annotated[int, Field(ge=1, le=64)] = Field(
        default="auto",
        description="Trials trained at once over one shared frozen backbone (a slot); 1: each trial alone; auto: "
        "the trials spread over the slots that fit, at most 32 each, and each slot keeps the seats that save step time "
        "(it times 1, 2, 4, ... members; on a CPU 1); picks of a kind that trains the backbone (lora, full_finetune) "
        "run solo beside the slots",
    )

    @model_validator(mode="before")
    @classmethod
    def _concurrency_moved(cls, raw: Any) -> Any:
        return refuse_retired(
            raw,
            "max_concurrent_trials",
            "search.max_concurrent_trials moved to the top level (max_concurrent_trials), where "
            "skray compare reads it too",
        )

    @model_validator(mode="before")
    @classmethod
    def _read_wordings_file(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or not raw.get("wordings_file"):
            return raw
        listed = raw.get("wordings") or []
        if not isinstance(listed, list):
            return raw  # the wordings' own type error says more
        path = Path(str(raw["wordings_file"])).expanduser()
        if not path.is_file():
            raise ValueError(f"search.wordings_file {str(path)!r}: no such file")
        lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
        found = [line for line in lines if line and not line.startswith("#")]
        if not found:
            raise ValueError(f"search.wordings_file {str(path)!r} holds no sentences (blank and # lines are skipped)")
        return {**raw, "wordings": [*listed, *found], "wordings_file": None}

    @field_validator("objectives", mode="before")
    @classmethod
    def _objectives_known(cls, raw: Any) -> Any:
        if isinstance(raw, list):
            raw = {name: cls.OBJECTIVES.get(name, "max") for name in raw}
        if isinstance(raw, dict):
            if not raw:
                raise ValueError("name at least one objective, e.g. {best_val_acc: max}")
            unknown = next((name for name in raw if name not in cls.OBJECTIVES), None)
            if unknown is not None:
                raise ValueError(f"unknown {unknown!r}; objectives are result columns: {', '.join(cls.OBJECTIVES)}")
        return raw

    @model_validator(mode="after")
    def _wordings_not_blank(self) -> SearchConfig:
        if any(not w.strip() for w in self.wordings):
            raise ValueError("search.wordings must not contain blank sentences")
        twice = next((w for i, w in enumerate(self.wordings) if w in self.wordings[:i]), None)
        if twice is not None:
            raise ValueError(f"search.wordings lists {twice!r} twice (wordings_file included); keep one")
        if self.prefix_length.high > MAX_PREFIX_LENGTH:
            raise ValueError(f"search.prefix_length.high must be at most {MAX_PREFIX_LENGTH}, as method.prefix_length")
        return self

    @model_validator(mode="after")
    def _sampler_fits(self) -> SearchConfig:
        if self.screen and self.screen.keep >= len(self.wordings):
            raise ValueError(
                f"search.screen.keep ({self.screen.keep}) must be below the number of wordings "
                f"({len(self.wordings)}), or the screen drops none"
            )
        if self.startup_points == "spread" and self.sampler not in ("tpe", "gp"):
            raise ValueError(
                f"search.startup_points: spread places tpe's and gp's start-up; sampler {self.sampler} has none"
            )
        if self.startup_trials is not None:
            if self.sampler in ("random", "grid"):
                raise ValueError(f"search.startup_trials: sampler {self.sampler} has no start-up phase; remove it")
            if self.startup_trials > self.num_trials:
                raise ValueError(
                    f"search.startup_trials ({self.startup_trials}) must not exceed search.num_trials "
                    f"({self.num_trials}); for a search that is random throughout, set search.sampler random"
                )
        if self.sampler == "grid":
            # The points skray.searcher.Space.grid() makes: low, middle and high of each range.
            low, high = self.prefix_length.low, self.prefix_length.high
            lengths = len({low, (low + high) // 2, high})
            wordings = self.screen.keep if self.screen else len(self.wordings)
            if self.num_trials > wordings * lengths * 3:
                raise ValueError(
                    f"search.num_trials ({self.num_trials}) exceeds the grid's {wordings * lengths * 3} points "
                    f"({wordings} wordings x {lengths} prefix lengths x 3 learning rates); lower it or choose "
                    "another search.sampler"
                )
        return self

    @property
    def startup(self) -> int:
        """Random start-up trials of tpe and gp (nsga2's population): as set, else a quarter of the
        search, at least 2: TPE's own default of 10 would make a search of 4-12 trials random."""
        if self.startup_trials is not None:
            return self.startup_trials
        return min(self.num_trials, max(2, self.num_trials // 4))

    def resolved_objectives(self, task: str, select_by: str = "accuracy") -> list[tuple[str, str]]:
        """(result column, max|min) pairs, the selection metric (``train.select_by``) first (the one ASHA
        stops by and single-objective Optuna reports intermediate values of); a ConfigError if it is
        missing or an objective does not exist for ``task``."""
        key = f"best_val_{selection_metric(task, select_by)}"
        chosen = self.objectives or {key: "max"}
        if chosen.get(key) != "max":
            raise ConfigError(
                f"search.objectives must include {key}: max, the score ASHA stops trials by and the table "
                "ranks them by (train.select_by)"
            )
        spans = [name for name in chosen if name in ("best_val_precision", "best_val_recall")]
        if spans and task != "token_classification":
            raise ConfigError(f"search.objectives: {spans[0]} exists for data.task token_classification only")
        return [(key, "max"), *((name, mode) for name, mode in chosen.items() if name != key)]
