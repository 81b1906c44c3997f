"""The ``train`` section: workers, DeepSpeed (ZeRO stage, offload, precision), steps and evaluation;
what ``auto`` becomes once the cluster is known."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from skray.config.section import Section, refuse_retired
from skray.errors import ConfigError

Offload = Literal["none", "optimizer", "params", "all"]
NVME_NEEDS_GPU = (
    "train.offload_device nvme runs on GPU workers only (DeepSpeed's CPU accelerator has no NVMe offload); "
    "use offload_device cpu, or train.use_gpu true on GPU nodes"
)
NVME_NEEDS_ZERO3 = (
    "train.offload_device nvme needs train.zero_stage 3 (or auto): DeepSpeed's ZeRO 1 and 2 keep offloaded "
    "state in CPU memory whatever the device; set train.zero_stage 3 or train.offload_device cpu"
)


def offloads_optimizer(offload: str) -> bool:
    """Whether this ``train.offload`` moves the optimizer state (its fp32 masters and Adam moments) off the GPU."""
    return offload in ("optimizer", "all")


def offloads_params(offload: str) -> bool:
    """Whether this ``train.offload`` moves the parameters (the frozen backbone's too; ZeRO 3 only) off the GPU."""
    return offload in ("params", "all")


class TrainConfig(Section):
    """How each Ray Train worker group runs DeepSpeed.

    ``auto`` values are settled per run: ``use_gpu`` by whether Ray sees GPUs (see
    ``resolve_device``), ``precision`` as fp32 on CPUs and in the GPU workers by their compute
    capability, and ``zero_stage`` (with ``offload``) in the workers from a memory estimate before
    the engine is built.
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
        description="Where offloaded state lives: host memory, or files on a fast local disk (nvme: ZeRO 3 on GPU "
        "workers only, with train.nvme_path)",
    )
    nvme_path: str | None = Field(
        default=None,
        description="A folder on a local NVMe disk of every node for offload_device nvme (DeepSpeed's ZeRO-Infinity)",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="Number format DeepSpeed trains in; auto: bf16 on GPUs of compute capability 8.0 or more "
        "(A100, H100, L4, RTX 30xx on), fp32 on older GPUs and on CPUs",
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
    select_by: Literal["accuracy", "macro_f1"] = Field(
        default="accuracy",
        description="What picks the best evaluation of a trial and the best trial (on validation): accuracy, or "
        "macro-F1 (for imbalanced labels); both are always reported. Token classification: span F1 either way",
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
        return refuse_retired(
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
            if self.zero_stage not in (3, "auto"):
                raise ValueError(NVME_NEEDS_ZERO3)
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
    """``use_gpu`` auto made concrete: GPUs when the cluster has (or can grow) one for each of a trial's
    ``workers``, else CPUs: 2 workers cannot share 1 GPU, so they train on CPUs. ``cluster_gpus`` None
    means an autoscaling cluster whose node types are not known here: auto cannot tell, and guessing
    CPU would train in fp32 on the CPUs of paid GPU nodes. ``precision`` auto is fp32 on CPUs and stays
    auto on GPUs: the workers decide it by their GPUs' compute capability (this process may see none)."""
    if train.use_gpu == "auto" and cluster_gpus is None:
        raise ConfigError(
            "train.use_gpu auto: this Ray cluster autoscales and skray cannot see its node types, so it cannot "
            "tell whether GPU nodes will join; set train.use_gpu true (GPU node types) or false (CPU only)"
        )
    use_gpu = (cluster_gpus or 0) >= workers if train.use_gpu == "auto" else train.use_gpu
    if train.offload_device == "nvme" and not use_gpu:
        raise ConfigError(f"{NVME_NEEDS_GPU} (train.use_gpu auto found no GPU for every worker)")
    precision = "fp32" if train.precision == "auto" and not use_gpu else train.precision
    return train.model_copy(update={"use_gpu": use_gpu, "precision": precision})
