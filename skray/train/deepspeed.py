"""DeepSpeed from the experiment config: the engine, and the trainable state in and out of it.

The optimizer is a plain ``torch.optim.AdamW`` over the trainable parameters only, handed to
DeepSpeed: that avoids JIT-compiling FusedAdam/CPUAdam and keeps the frozen backbone out of
the optimizer state entirely.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from skray.config import TrainConfig, offloads_optimizer, offloads_params
from skray.partitioned import full_numel, largest_module_params

if TYPE_CHECKING:  # deepspeed itself is imported only after DS_ACCELERATOR is set
    from deepspeed import DeepSpeedEngine


def process_group_backend(use_gpu: bool) -> str:
    """gloo on CPUs; on GPUs NCCL for CUDA tensors and gloo for the CPU ones (the metrics and counts
    the recipe all-reduces), which NCCL alone has no backend for."""
    return "cpu:gloo,cuda:nccl" if use_gpu else "gloo"


def deepspeed_config(
    cfg: TrainConfig, trainable_params: int, largest_module_params: int = 0, largest_param: int = 0
) -> dict[str, Any]:
    """DeepSpeed's config. Its communication buckets are sized for what trains: the defaults (5e8
    elements, about 1 GB of bf16 buffers per bucket) are meant for full models, not a few thousand
    adapter parameters.

    At ZeRO 3, given the largest module's parameter count, a rank keeps about one module's weights
    gathered beyond its partition (live parameters, prefetch and reuse all capped at that module):
    DeepSpeed's defaults keep up to 1e9 parameters live, i.e. any backbone below 1B whole on every
    rank while it runs, which is what ZeRO 3 is chosen to avoid. Given the largest single
    parameter's element count, parameters offloaded to NVMe get swap buffers that hold its
    partition (``nvme_param_buffer``)."""
    bucket = int(min(5e8, max(trainable_params, 2**20)))
    zero: dict[str, Any] = {"stage": cfg.zero_stage, "reduce_bucket_size": bucket, "allgather_bucket_size": bucket}
    if cfg.zero_stage == 3 and largest_module_params:
        zero["stage3_max_live_parameters"] = largest_module_params
        zero["stage3_prefetch_bucket_size"] = largest_module_params
        zero["stage3_max_reuse_distance"] = largest_module_params
    where = {"device": cfg.offload_device} | ({"nvme_path": cfg.nvme_path} if cfg.offload_device == "nvme" else {})
    if offloads_optimizer(cfg.offload):
        zero["offload_optimizer"] = dict(where)
    if offloads_params(cfg.offload):  # ZeRO-Infinity: the partitions live off the GPU, gathered per module
        zero["offload_param"] = dict(where)
        if cfg.offload_device == "nvme" and largest_param:
            zero["offload_param"]["buffer_size"] = nvme_param_buffer(largest_param, cfg.num_workers)
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,
    }
    if cfg.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif cfg.precision == "fp16":
        ds["fp16"] = {"enabled": True, "initial_scale_power": 12}
    return ds


def nvme_param_buffer(largest_param: int, world: int) -> int:
    """Elements of each of DeepSpeed's pinned swap buffers for parameters on NVMe: the largest
    parameter's partition, ceil(numel / world). DeepSpeed stages every partition in one buffer and
    asserts that it fits (``AsyncPartitionedParameterSwapper.get_buffer``); its default, 1e8
    elements, is less than one partition of a Llama-3 embedding (128256 x 4096 = 525M) on fewer
    than 6 ranks. Sized to fit exactly, the buffers (5 by default) also pin no more host memory
    than that."""
    return -(-largest_param // world)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """The learning rate's multiplier: linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def build_engine(model: torch.nn.Module, cfg: TrainConfig) -> DeepSpeedEngine:
    """A DeepSpeed engine whose optimizer only sees the adapter and head."""
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg.warmup, cfg.max_steps))
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=schedule,
        model_parameters=params,
        config=deepspeed_config(
            cfg,
            sum(p.numel() for p in params),
            largest_module_params(model),
            max(full_numel(p) for p in model.parameters()),
        ),
    )
    return engine


def hold_frozen(model: torch.nn.Module, cfg: TrainConfig) -> DeepSpeedEngine:
    """A ZeRO-3 engine with no optimizer around a frozen backbone built partitioned: its hooks gather
    each module's weights for its forward and backward (gradients flow through to the inputs), and
    with parameter offload keep the partitions off the GPU. A packed slot's members train outside it."""
    import deepspeed

    largest = max(full_numel(p) for p in model.parameters())
    config = deepspeed_config(cfg, 0, largest_module_params(model), largest)
    engine, _, _, _ = deepspeed.initialize(model=model, config=config)
    return engine


def _trainable(engine: DeepSpeedEngine) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]


def gather_trainable(engine: DeepSpeedEngine) -> dict[str, torch.Tensor]:
    """Full fp32 copies of the trainable parameters on every rank (a collective: every rank calls it).

    The optimizer's fp32 masters where it keeps them (bf16/fp16: gathered from their ZeRO 1-3
    partitions, or the stage-0 optimizer's own copies), else the module's fp32 weights: a best state
    copied from bf16 module weights would lose every update smaller than bf16's resolution."""
    from deepspeed.utils import safe_get_full_fp32_param

    opt = engine.optimizer  # ZeRO 0 with bf16/fp16 keeps per-tensor masters beside the module's weights
    stage0 = {
        id(p): m
        for low, high in zip(getattr(opt, "fp16_groups", []), getattr(opt, "fp32_groups", []), strict=False)
        for p, m in zip(low, high, strict=True)
    }
    best = {}
    for n, p in _trainable(engine):
        master = safe_get_full_fp32_param(p)
        master = stage0.get(id(p), p.detach()) if master is None else master
        best[n] = master.detach().float().clone()
    return best


def load_trainable(engine: DeepSpeedEngine, state: dict[str, torch.Tensor]) -> None:
    """Put a saved trainable state back into the engine's module (ZeRO-3: rank 0 writes, then re-shards)."""
    import deepspeed

    named = _trainable(engine)
    with deepspeed.zero.GatheredParameters(
        [p for _, p in named], modifier_rank=0, enabled=engine.zero_optimization_stage() == 3
    ):
        with torch.no_grad():
            for n, p in named:
                p.copy_(state[n].to(p.dtype))


def held_param_bytes(engine: DeepSpeedEngine) -> int:
    """Parameter bytes this rank holds: its ZeRO-3 partition, or whole parameters below stage 3."""
    held = (getattr(p, "ds_tensor", p) for p in engine.module.parameters())
    return sum(t.numel() * t.element_size() for t in held)
