"""The ``method`` section: what trains (the method kinds and their learning-rate ranges), its semantic
prompt, adapter and head."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from skray.config.section import MAX_PREFIX_LENGTH, Section

MethodKind = Literal[
    "sk_prefix",
    "sk_prompt",  # SK-Tuning
    "prompt_tuning",
    "prompt_tuning_text",
    "prefix_tuning",
    "p_tuning",
    "lora",  # PEFT baselines
    "full_finetune",
    "linear_probe",  # the two ends
]

# The learning-rate range compare.tune searches for each kind unless told otherwise: about a decade
# around the rate docs/RESULTS.md measured for it on SmolLM2 (the README's table of method keys), so
# that a short search spends its trials where the kind trains, not four decades away from it.
LR_RANGES: dict[str, tuple[float, float]] = {
    "sk_prefix": (3e-4, 1e-2),
    "sk_prompt": (3e-4, 1e-2),
    "prompt_tuning": (1e-2, 1e-1),
    "prompt_tuning_text": (1e-2, 1e-1),
    "prefix_tuning": (3e-3, 3e-2),
    "p_tuning": (1e-3, 1e-2),
    "lora": (5e-4, 5e-3),
    "full_finetune": (5e-6, 5e-5),
    "linear_probe": (1e-3, 1e-2),
}


HeadKind = Literal["linear", "verbalizer", "mean_linear", "word_linear"]


class MethodConfig(Section):
    """The method, its semantic prompt and the size of what trains.

    ``prefix_length`` is m, the virtual positions of every prompt/prefix method; ``adapter_rank``
    is the SK adapter's rank and LoRA's r. ``wording`` is what SK methods read and what
    ``prompt_tuning_text`` initialises from. ``adapter`` chooses skray's mixer or a variant of the
    authors' design (only SK methods read it).
    """

    kind: MethodKind = Field(
        default="sk_prefix",
        description="What trains: sk_prefix or sk_prompt (SK-Tuning); the PEFT baselines prompt_tuning, "
        "prompt_tuning_text, prefix_tuning, p_tuning, lora; or full_finetune and linear_probe",
    )
    wording: str = Field(
        default="Classify the sentiment of the review as positive or negative.",
        min_length=1,
        description="The semantic prompt the frozen model reads (SK methods), or that prompt_tuning_text "
        "initialises from; say the task in plain words",
    )
    prefix_length: int = Field(
        default=8,
        ge=1,
        le=MAX_PREFIX_LENGTH,
        description="m, the virtual positions a prompt/prefix method joins to the input, independent of the "
        "wording's length; more positions train more parameters",
    )
    adapter_rank: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Rank of the SK adapter's low-rank refiner (adapter mixer), the hidden size of its mlp "
        "adapter, and LoRA's r; higher trains more parameters",
    )
    adapter: Literal["mixer", "linear", "mlp", "free"] = Field(
        default="mixer",
        description="How SK methods adapt the wording's k token states: mixer (a k -> m mixer plus a rank-r "
        "residual, any m), linear, mlp, or free (the authors' trainable prompt embeddings). linear, mlp and free "
        "keep m = k; docs/METHOD.md has each one's design and size",
    )
    head: HeadKind = Field(
        default="verbalizer",
        description="verbalizer: the frozen LM head scores one word per label (decoders only, nothing trains); "
        "linear: a trained layer over pooled states (any backbone); mean_linear: the authors' head, a trained "
        "layer averaged over all positions; word_linear: a trained layer that starts as the verbalizer",
    )
    calibrate: bool | None = Field(
        default=None,
        description="word_linear only: before training, take a content-free input's ('N/A' in the template) "
        "label scores off the head's bias (contextual calibration); unset: on for word_linear (it was better "
        "calibrated on every task measured, docs/RESULTS.md)",
    )
    label_words: dict[str, str] | None = Field(
        default=None,
        description="The verbalizer's word per label, e.g. {fresh: ' positive'}; the words must start with "
        "different tokens; unset: a space plus the label name",
    )
    lora_target_modules: list[str] | None = Field(
        default=None,
        min_length=1,
        description="The modules LoRA adapts, by name (e.g. [q_proj, v_proj]); PEFT's default for the "
        "architecture if unset",
    )

    @property
    def calibrated(self) -> bool:
        """Whether the head's bias is calibrated before training (``calibrate``, or its default)."""
        return self.calibrate if self.calibrate is not None else self.head == "word_linear"

    @model_validator(mode="after")
    def _probe_is_linear(self) -> MethodConfig:
        if self.kind == "linear_probe" and self.head == "verbalizer":
            raise ValueError(
                "method.kind linear_probe trains only a head; set method.head: linear, mean_linear or word_linear"
            )
        if self.calibrate and self.head != "word_linear":
            raise ValueError("method.calibrate sets the trainable bias of method.head: word_linear; set that head")
        return self
