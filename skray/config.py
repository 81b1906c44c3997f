"""The typed experiment config: YAML in, validated objects out, one-line errors for mistakes.

Every section forbids unknown keys so that a typo (``lerning_rate``) fails loudly instead of
silently training with a default.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from skray.errors import ConfigError

MAX_PREFIX_LENGTH = 1024  # method.prefix_length and the range a search samples it from


def _refuse_retired(raw: Any, key: str, message: str) -> Any:
    """A key skray no longer reads gets its own one-line explanation, not "unknown key"."""
    if isinstance(raw, dict) and key in raw:
        raise ValueError(message)
    return raw


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _absolute_if_local(name: str, embedded: Collection[str]) -> str:
    """A local path made absolute where the config is read: Ray's workers run in another folder, so
    a relative path would miss there (and a data path would be tried as a hub id). Embedded names,
    hub ids and URIs stay as they are."""
    from skray.storage import location

    return location(name) if name not in embedded and Path(name).expanduser().exists() else name


class BackboneConfig(_Section):
    """Which frozen model to tune: an embedded name, a local HF folder or a hub id."""

    name: str = Field(
        default="smollm2-135m",
        description="The frozen model: an embedded name (smollm2-135m, minilm-l6), a local Hugging Face model "
        "folder, or a hub id",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Run the Python code a model folder or hub repo ships (some architectures need it); "
        "turn on only for a source you trust",
    )

    @field_validator("name")
    @classmethod
    def _local_name_absolute(cls, name: str) -> str:
        from skray.backbones import EMBEDDED

        return _absolute_if_local(name, EMBEDDED)


class DataConfig(_Section):
    """Which labelled data to use and how to turn a row into model input.

    ``task: token_classification`` reads a list of words (text_column) and one tag per word
    (label_column), e.g. IOB2 NER tags; everything else is one label per row.
    """

    name: str = Field(
        default="rotten_tomatoes_critics",
        description="The labelled data: an embedded set (rotten_tomatoes_critics, crowdflower_tweets), "
        "a .csv/.jsonl/.parquet file, a folder of per-split files, or a hub dataset id",
    )
    task: Literal["classification", "token_classification"] = Field(
        default="classification",
        description="classification: one label per row; token_classification: one tag per word (e.g. IOB2 NER), "
        "needs method.head linear",
    )
    text_column: str = Field(
        default="text",
        description="The column holding the input text (for token_classification: a list of words)",
    )
    text_pair_column: str | None = Field(
        default=None,
        description="The column holding a row's second text, for sentence-pair tasks (then the template needs "
        "{text_pair})",
    )
    label_column: str = Field(
        default="label",
        description="The column holding each row's label (for token_classification: one tag per word)",
    )
    labels: list[str] | None = Field(
        default=None,
        min_length=2,
        description="The label names, in class order; unset: the sorted labels seen in train. Any other label in "
        "the data is an error",
    )
    group_column: str | None = Field(
        default=None,
        description="Rows sharing this column's value stay in one split when skray makes the split (e.g. a movie "
        "id, so no movie leaks into evaluation); unset: equal texts stay together",
    )
    template: str = Field(
        default="{text}",
        description="How a row becomes model input; must contain {text} (and {text_pair} for pairs); the tail, "
        "e.g. '\\nSentiment:', is the cue the head reads and is never cut",
    )
    max_length: int = Field(
        default=128,
        ge=8,
        le=8192,
        description="Tokens per input row, template included; a longer row is cut inside its text. Raise it for "
        "long texts, lower it for speed and memory",
    )
    max_train_samples: int | None = Field(
        default=None, ge=1, description="Cap on training rows (a seeded sample); unset: all of them"
    )
    max_eval_samples: int | None = Field(
        default=None, ge=1, description="Cap on validation rows (a seeded sample), to make evaluations cheaper"
    )
    max_test_samples: int | None = Field(
        default=None, ge=1, description="Cap on test rows (a seeded sample), to make the final test cheaper"
    )
    validation_fraction: float = Field(
        default=0.1,
        gt=0,
        lt=0.5,
        description="Share of rows carved out for validation when the data has no validation split",
    )
    test_fraction: float = Field(
        default=0.1, gt=0, lt=0.5, description="Share of rows carved out for test when the data has no test split"
    )
    drop_missing: bool = Field(
        default=False,
        description="Rows with no text or label: an error naming them, or dropped (and counted) if true",
    )

    @field_validator("name")
    @classmethod
    def _local_name_absolute(cls, name: str) -> str:
        from skray.data.embedded import EMBEDDED

        return _absolute_if_local(name, EMBEDDED)

    @model_validator(mode="after")
    def _template_has_text(self) -> DataConfig:
        if "{text}" not in self.template:
            raise ValueError("data.template must contain '{text}'")
        if self.text_pair_column and "{text_pair}" not in self.template:
            raise ValueError("data.template must contain '{text_pair}' when text_pair_column is set")
        if self.task == "token_classification" and (self.template != "{text}" or self.text_pair_column):
            raise ValueError(
                "data.task token_classification reads the words as they are; "
                "remove data.template and data.text_pair_column"
            )
        return self


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


class MethodConfig(_Section):
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
        description="How SK methods adapt the wording's k token states. mixer: a k -> m token mixer plus a "
        "rank-r residual on the cached states (any m); linear: an identity-initialised map of each state "
        "(sk_prompt: Linear(d, d); sk_prefix: one Linear(head_dim, head_dim) shared by every layer, keys and "
        "values); mlp: a zero-initialised bottleneck residual (hidden size adapter_rank) per state (sk_prefix: per "
        "layer, for keys and for values); free: the authors' design, the k prompt embeddings themselves train, "
        "started from the wording's (sk_prefix reruns the frozen model on them every step). linear, mlp and free "
        "keep m = k: a prefix_length other than the wording's token count is refused when the model is built",
    )
    head: Literal["linear", "verbalizer", "mean_linear"] = Field(
        default="verbalizer",
        description="verbalizer: the frozen LM head scores one word per label (decoders only, "
        "no trainable parameters, meaningful at step 0); linear: a trained layer over pooled states (any backbone); "
        "mean_linear: the authors' head, a trained layer at every position averaged over all positions, "
        "padding included (per position for token classification)",
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

    @model_validator(mode="after")
    def _probe_is_linear(self) -> MethodConfig:
        if self.kind == "linear_probe" and self.head == "verbalizer":
            raise ValueError("method.kind linear_probe trains only a head; set method.head: linear or mean_linear")
        return self


Offload = Literal["none", "optimizer", "params", "all"]
NVME_NEEDS_GPU = (
    "train.offload_device nvme runs on GPU workers only (DeepSpeed's CPU accelerator has no NVMe offload); "
    "use offload_device cpu, or train.use_gpu true on GPU nodes"
)


def offloads_optimizer(offload: str) -> bool:
    """Whether this ``train.offload`` moves the optimizer state (its fp32 masters and Adam moments) off the GPU."""
    return offload in ("optimizer", "all")


def offloads_params(offload: str) -> bool:
    """Whether this ``train.offload`` moves the parameters (the frozen backbone's too; ZeRO 3 only) off the GPU."""
    return offload in ("params", "all")


class TrainConfig(_Section):
    """How each Ray Train worker group runs DeepSpeed.

    ``auto`` values are settled per run: ``use_gpu`` by whether Ray sees GPUs, ``precision``
    as bf16 on GPUs and fp32 on CPUs (see ``resolve_device``), and ``zero_stage`` (with
    ``offload``) in the workers from a memory estimate before the engine is built.
    """

    num_workers: int = Field(
        default=2, ge=1, description="Ray Train workers per run, each one DeepSpeed rank (one GPU each on GPUs)"
    )
    cpus_per_worker: float | None = Field(
        default=None,
        gt=0,
        description="CPUs Ray reserves per worker (and its torch threads); unset: a share that fits the cluster",
    )
    memory_per_worker_gb: float | None = Field(
        default=None,
        gt=0,
        description="Host memory (GiB) Ray reserves per worker; a run whose workers need more is refused before "
        "launch; unset: nothing reserved, the nodes' memory is the limit",
    )
    use_gpu: bool | Literal["auto"] = Field(
        default="auto",
        description="Train on GPUs (NCCL) or CPUs (gloo); auto: GPUs when Ray has one for every worker of a "
        "trial (on an autoscaling cluster: its node types can), else CPUs",
    )
    zero_stage: Annotated[int, Field(ge=0, le=3)] | Literal["auto"] = Field(
        default=2,
        description="DeepSpeed ZeRO stage 0-3 (a higher stage shards more state across workers: less memory each, "
        "more communication); auto: the lowest stage, and offload, whose memory estimate fits",
    )
    offload: Offload = Field(
        default="none",
        description="Move the optimizer state (optimizer, ZeRO 1-3), the parameters (params, ZeRO 3: the frozen "
        "backbone too) or both (all, ZeRO 3) off the GPU, when it runs out",
    )
    offload_device: Literal["cpu", "nvme"] = Field(
        default="cpu",
        description="Where offloaded state lives: host memory, or files on a fast local disk (nvme; GPU workers "
        "only, with train.nvme_path)",
    )
    nvme_path: str | None = Field(
        default=None,
        description="A folder on a local NVMe disk of every node for offload_device nvme (DeepSpeed's ZeRO-Infinity)",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="Number format DeepSpeed trains in; auto: bf16 on GPUs, fp32 on CPUs",
    )
    micro_batch_size: int = Field(
        default=4, ge=1, description="Rows per worker per forward pass; lower it when memory runs out"
    )
    grad_accum: int = Field(
        default=1,
        ge=1,
        description="Micro batches summed per optimizer step; raises the effective batch without more memory",
    )
    lr: float = Field(
        default=1e-3, gt=0, le=1.0, description="Peak learning rate of AdamW (what search.lr searches in tune)"
    )
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay on what trains")
    class_weights: Literal["none", "balanced"] = Field(
        default="none",
        description="balanced: weigh each label's loss by the inverse of its frequency in the train split "
        "(n / (labels x count)), for imbalanced data; none: every row counts the same",
    )
    max_steps: int = Field(
        default=60, ge=1, description="Optimizer steps per run: the training budget, the same for every trial"
    )
    eval_every: int = Field(
        default=20,
        ge=1,
        description="Steps between validation evaluations; each one reports to Ray Tune and writes a checkpoint",
    )
    eval_batch_size: int = Field(default=16, ge=1, description="Rows per forward pass when evaluating")
    seed: int = Field(
        default=0, description="Seed of the trainable weights' initialisation and of the training data order"
    )
    lr_warmup_steps: int | None = Field(
        default=None, ge=0, description="Steps of linear learning-rate warm-up (default: a tenth of max_steps)"
    )
    untimed_steps: int = Field(
        default=2, ge=0, description="First steps left out of the steady-state throughput (allocations, caches)"
    )
    max_failures: int = Field(
        default=2, ge=-1, description="Restarts of a failed worker group from its last checkpoint (-1: no limit)"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_ambiguous_warmup(cls, raw: Any) -> Any:
        return _refuse_retired(
            raw,
            "warmup_steps",
            "warmup_steps was split in two: lr_warmup_steps (learning-rate warm-up) "
            "and untimed_steps (steps left out of throughput timing); use the one you mean",
        )

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> TrainConfig:
        if self.zero_stage == "auto":
            if self.offload != "none":
                raise ValueError(
                    "train.offload is chosen by zero_stage auto; remove train.offload or set train.zero_stage 0-3"
                )
        elif offloads_params(self.offload) and self.zero_stage != 3:
            raise ValueError(f"train.offload '{self.offload}' (parameters) needs train.zero_stage 3")
        elif self.offload == "optimizer" and self.zero_stage == 0:
            raise ValueError("train.offload 'optimizer' needs train.zero_stage 1, 2 or 3")
        if self.offload_device == "nvme":
            if self.offload == "none" and self.zero_stage != "auto":
                raise ValueError("train.offload_device nvme needs train.offload optimizer, params or all")
            if not self.nvme_path:
                raise ValueError("train.offload_device nvme needs train.nvme_path (a folder on a local NVMe disk)")
            if self.use_gpu is False:
                raise ValueError(NVME_NEEDS_GPU)
        if self.lr_warmup_steps is not None and self.lr_warmup_steps > self.max_steps:
            raise ValueError(
                f"train.lr_warmup_steps ({self.lr_warmup_steps}) must not exceed train.max_steps ({self.max_steps})"
            )
        return self

    @property
    def warmup(self) -> int:
        """Learning-rate warm-up steps: as configured, else a tenth of the run (at least 1)."""
        return self.lr_warmup_steps if self.lr_warmup_steps is not None else max(1, self.max_steps // 10)


def resolve_device(train: TrainConfig, cluster_gpus: float | None, workers: int) -> TrainConfig:
    """``use_gpu``/``precision`` auto made concrete: GPUs (bf16) when the cluster has (or can grow) one
    for each of a trial's ``workers``, else CPUs (fp32): 2 workers cannot share 1 GPU, so they train
    on CPUs. ``cluster_gpus`` None means an autoscaling cluster whose node types are not known here:
    auto cannot tell, and guessing CPU would train in fp32 on the CPUs of paid GPU nodes."""
    if train.use_gpu == "auto" and cluster_gpus is None:
        raise ConfigError(
            "train.use_gpu auto: this Ray cluster autoscales and skray cannot see its node types, so it cannot "
            "tell whether GPU nodes will join; set train.use_gpu true (GPU node types) or false (CPU only)"
        )
    use_gpu = (cluster_gpus or 0) >= workers if train.use_gpu == "auto" else train.use_gpu
    if train.offload_device == "nvme" and not use_gpu:
        raise ConfigError(f"{NVME_NEEDS_GPU} (train.use_gpu auto found no GPU for every worker)")
    precision = ("bf16" if use_gpu else "fp32") if train.precision == "auto" else train.precision
    return train.model_copy(update={"use_gpu": use_gpu, "precision": precision})


def selection_metric(task: str) -> str:
    """What "best" means, in the worker, the search and the table alike: validation accuracy
    (``acc``), or span F1 for token classification (where most tags are O, so accuracy says little)."""
    return "f1" if task == "token_classification" else "acc"


class IntRange(_Section):
    """An integer range to search, both ends included."""

    low: int = Field(ge=1, description="The smallest value tried (included)")
    high: int = Field(ge=1, description="The largest value tried (included)")

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class LogRange(_Section):
    """A positive range searched log-uniformly (as fine near low as near high)."""

    low: float = Field(gt=0, description="The lower end of the range")
    high: float = Field(gt=0, le=1.0, description="The upper end of the range, above low")

    @model_validator(mode="after")
    def _ordered(self) -> LogRange:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class ScreenConfig(_Section):
    """A zero-shot screen before the search: every wording is scored at step 0 (no training), and
    only the best ``keep`` reach Optuna, so a long list of candidates costs an evaluation each
    instead of a trial each."""

    keep: int = Field(ge=1, description="Wordings the screen passes on to the search: the best zero-shot scores")


class SearchConfig(_Section):
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
    heads: list[Literal["linear", "verbalizer", "mean_linear"]] | None = Field(
        default=None, min_length=2, description="Heads Optuna chooses among; unset: method.head alone"
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
        "numeric range (start-up trial i of n at quantile (i + 1/2) / n of the learning rate's log range, the "
        "other ranges in a seeded shuffled order), so a short search cannot leave half a range untried",
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

    @model_validator(mode="before")
    @classmethod
    def _concurrency_moved(cls, raw: Any) -> Any:
        return _refuse_retired(
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

    def resolved_objectives(self, task: str) -> list[tuple[str, str]]:
        """(result column, max|min) pairs, the selection metric first (the one ASHA stops by and
        single-objective Optuna reports intermediate values of); a ConfigError if it is missing or
        an objective does not exist for ``task``."""
        key = f"best_val_{selection_metric(task)}"
        chosen = self.objectives or {key: "max"}
        if chosen.get(key) != "max":
            raise ConfigError(
                f"search.objectives must include {key}: max, the score ASHA stops trials by and the table ranks them by"
            )
        spans = [name for name in chosen if name in ("best_val_precision", "best_val_recall")]
        if spans and task != "token_classification":
            raise ConfigError(f"search.objectives: {spans[0]} exists for data.task token_classification only")
        return [(key, "max"), *((name, mode) for name, mode in chosen.items() if name != key)]


class CompareTuneConfig(_Section):
    """A search per method before the seeds, the same budget for each, so no method is compared at a
    learning rate that suits another."""

    trials: int = Field(
        ge=1,
        description="Optuna trials each method gets (TPE, its start-up spread over the ranges; ASHA stops weak ones)",
    )
    lr: LogRange | None = Field(
        default=None,
        description="The learning-rate range every method searches, log-uniformly; unset: each kind its own "
        "(skray.config.LR_RANGES, the README's table), and an entry's own lr: {low, high} overrides both",
    )
    prefix_length: IntRange | None = Field(
        default=None,
        description="The range of m searched too, by the methods that have virtual positions; unset: "
        "method.prefix_length",
    )


class CompareConfig(_Section):
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


class ScaleConfig(_Section):
    """What ``skray scale`` measures: each valid point of workers x ZeRO stage x offload x micro
    batch, one short run at a time (``train.max_steps`` steps, ``train.untimed_steps`` not timed)."""

    num_workers: list[Annotated[int, Field(ge=1)]] = Field(
        default=[1, 2], min_length=1, description="Worker counts to measure (train.num_workers at each point)"
    )
    zero_stages: list[Annotated[int, Field(ge=0, le=3)]] = Field(
        default=[0, 1, 2, 3], min_length=1, description="ZeRO stages to measure (train.zero_stage at each point)"
    )
    offloads: list[Offload] = Field(
        default=["none"],
        min_length=1,
        description="Offload settings to measure (train.offload); points whose ZeRO stage cannot offload so are "
        "skipped",
    )
    micro_batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(
        default=[8], min_length=1, description="Micro batch sizes to measure (train.micro_batch_size at each point)"
    )


class MlflowConfig(_Section):
    """Where Ray's MLflow logger sends each trial's parameters and reports."""

    tracking_uri: str = Field(
        description="The MLflow tracking server or store, e.g. http://mlflow:5000 or sqlite:///abs/path/mlflow.db"
    )
    experiment_name: str | None = Field(default=None, description="The MLflow experiment; unset: the run's name")


class TrackingConfig(_Section):
    """Experiment trackers fed through Ray Tune's own logger callbacks, beside skray's tables."""

    tensorboard: bool = Field(
        default=False, description="Write TensorBoard event files in each trial's folder (tensorboard --logdir RUN_DIR)"
    )
    mlflow: MlflowConfig | None = Field(
        default=None, description="Log every trial to MLflow (needs the mlflow package)"
    )


class ExperimentConfig(_Section):
    """One experiment: the YAML file a user writes, fully validated."""

    name: str = Field(
        default="skray",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="The run's name: its directory is <storage_path>/<name>-<command>-<time>/, and a rerun of the "
        "same name, command and config resumes it",
    )
    storage_path: str = Field(
        default="runs",
        description="Where run directories go: a local folder, or on a cluster an absolute shared path or an "
        "s3:// / gs:// URI",
    )
    max_concurrent_trials: int | None = Field(
        default=None,
        ge=1,
        description="Most trials running at once (skray tune and compare); unset: as many as the cluster fits",
    )
    backbone: BackboneConfig = Field(default=BackboneConfig(), description="The frozen model to tune")
    data: DataConfig = Field(default=DataConfig(), description="The labelled data and how a row becomes model input")
    method: MethodConfig = Field(
        default=MethodConfig(), description="The method, its semantic prompt and the size of what trains"
    )
    train: TrainConfig = Field(default=TrainConfig(), description="How each run trains: workers, DeepSpeed, steps")
    tracking: TrackingConfig = Field(default=TrackingConfig(), description="Experiment trackers (TensorBoard, MLflow)")
    search: SearchConfig | None = Field(default=None, description="What skray tune searches; only skray tune reads it")
    compare: CompareConfig | None = Field(
        default=None, description="The methods x seeds skray compare runs; only skray compare reads it"
    )
    scale: ScaleConfig | None = Field(
        default=None, description="The grid skray scale measures; only skray scale reads it"
    )

    @model_validator(mode="after")
    def _task_fits_method(self) -> ExperimentConfig:
        if self.data.task == "token_classification" and self.method.head == "verbalizer":
            raise ValueError(
                "method.head: token classification scores every word with a linear head; set method.head: linear"
            )
        if self.compare:
            for entry in self.compare.methods:
                method_variant(self.method, entry)  # every entry must make a valid method section
                lr = entry_lr(entry, self.train.lr)
                if self.compare.tune is not None and isinstance(entry, dict) and "lr" in entry:
                    if not isinstance(lr, dict):
                        raise ValueError(
                            f"compare.methods entry {entry!r}: compare.tune searches each method's lr; give the "
                            "range to search, lr: {low: ..., high: ...}, or leave lr out for the kind's own"
                        )
                    try:
                        LogRange.model_validate(lr)
                    except ValidationError:
                        raise ValueError(
                            f"compare.methods entry {entry!r}: lr must be a range {{low, high}}, 0 < low < high <= 1"
                        ) from None
                elif not isinstance(lr, (int, float)) or not 0 < lr <= 1:
                    raise ValueError(
                        f"compare.methods entry {entry!r}: lr must be a number in (0, 1] (a range needs compare.tune)"
                    )
            compare_labels(self.compare.methods, self.train.lr)  # every entry must be told apart
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


def method_variant(base: MethodConfig, entry: str | dict[str, Any]) -> MethodConfig:
    """The ``method`` section with one compare entry applied; a probe always gets a linear head."""
    update = {"kind": entry} if isinstance(entry, str) else {k: v for k, v in entry.items() if k != "lr"}
    if update.get("kind") == "linear_probe":
        update.setdefault("head", "linear")
    try:
        return MethodConfig.model_validate({**base.model_dump(), **update})
    except ValidationError as err:
        raise ValueError(f"compare.methods entry {entry!r}: {_format_error(err)}") from None


_UNION_TAGS = {"bool", "int", "float", "str", "list", "dict"}


def _field_path(loc: tuple) -> str:
    """``train.zero_stage``: the keys a user wrote, without pydantic's union-member tags."""
    return ".".join(str(p) for p in loc if isinstance(p, int) or (p.isidentifier() and p not in _UNION_TAGS))


def _known_keys(where: str) -> str:
    """The keys the section of ``where`` takes, the closest first if one is close (a typo)."""
    import difflib

    *parents, key = where.split(".")
    model: Any = ExperimentConfig
    for part in parents:
        field = model.model_fields.get(part)
        inner = [a for a in get_args(field.annotation) or (field.annotation,) if isinstance(a, type)] if field else []
        model = next((a for a in inner if issubclass(a, BaseModel)), None)
        if model is None:
            return "every key is listed, with what it does, in skray/config.py"
    keys = list(model.model_fields)
    close = difflib.get_close_matches(key, keys, n=1)
    section = ".".join(parents) or "the top level"
    hint = f"did you mean {'.'.join([*parents, close[0]])}? " if close else ""
    return f"{hint}{section} takes: {', '.join(keys)}"


def _format_error(err: ValidationError) -> str:
    errors = err.errors()
    first = errors[0]
    where = _field_path(first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key; {_known_keys(where)}"
    # A union (``0-3`` or ``auto``) fails once per member: say every way the value could be right.
    msgs = dict.fromkeys(
        e["msg"].removeprefix("Value error, ") for e in errors if _field_path(e["loc"]) == _field_path(first["loc"])
    )
    msg = "; or ".join(msgs)
    given = first.get("input")
    shown = "" if isinstance(given, (dict, list)) or given is None else f" (got {given!r})"
    return f"{where}: {msg}{shown}"


def _parse_value(text: str) -> Any:
    """YAML for numbers, booleans, lists and mappings; text YAML cannot read stays as written."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The section class behind ``Section`` or ``Section | None``."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def is_text_key(parts: list[str]) -> bool:
    """Whether ``section.key`` holds a string (str or str | None): such a value is taken as written,
    so a wording with ": " or a "yes" stays text instead of becoming a mapping or True."""
    model: type[BaseModel] | None = ExperimentConfig
    for part in parts[:-1]:
        field = model.model_fields.get(part)
        model = _section_model(field.annotation) if field else None
        if model is None:
            return False
    field = model.model_fields.get(parts[-1])
    if field is None:
        return False
    kinds = get_args(field.annotation) if get_origin(field.annotation) in (Union, UnionType) else (field.annotation,)
    return str in kinds and set(kinds) <= {str, type(None)}


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings: text keys take the value as written, the others are parsed
    as YAML so that numbers stay numbers and lists and mappings can be given."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key.sub=value")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part} is not a section")
            node = child
        node[parts[-1]] = value if is_text_key(parts) else _parse_value(value)
    return raw


def parse_config(raw: dict[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML file, apply ``--set`` overrides and validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return parse_config(apply_overrides(raw, overrides or []))
