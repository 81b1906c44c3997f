"""Per-worker memory estimates for ``train.zero_stage: auto``: pick the cheapest ZeRO setting that fits.

Lower stages and no offload communicate less and run faster, so the choice is the first of
(0, none), (1, none), (2, none), (3, none), (2, optimizer), (3, optimizer), (3, params), (3, all)
whose estimate fits the worker, decided before launch instead of discovered as an out-of-memory crash.

The estimate is params + optimizer states + activations on the device that runs the model.
Activations are measured (one forward of one micro batch); model states come from DeepSpeed's
own estimators for the trainable part, with the frozen backbone added here because DeepSpeed
assumes every parameter trains.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import itertools
import os
import resource
from dataclasses import dataclass

import torch
from torch import nn

from skray.config import TrainConfig, offloads_optimizer, offloads_params
from skray.errors import ResourceError
from skray.partitioned import dtype_of, full_numel, is_partitioned, largest_module_params, module_by_module

GIB = 2**30
# In that order: no offload before offload, then the stage that partitions more.
CANDIDATES: tuple[tuple[int, str], ...] = (
    (0, "none"),
    (1, "none"),
    (2, "none"),
    (3, "none"),
    (2, "optimizer"),
    (3, "optimizer"),
    (3, "params"),
    (3, "all"),
)
_DS_BYTES = 2  # DeepSpeed's estimators assume 16-bit params and 16-bit grads
_FP32_STATES = (
    16  # per trainable param: fp32 grad + fp32 master weight + Adam m + Adam v (DeepSpeed's 18 less its 16-bit grad)
)
GPU_RESERVE_FRACTION = 0.05
"""Share of a GPU worker's budget that ``zero_stage: auto`` leaves unplanned, for what grows with the
device's use: the caching allocator's rounding and split blocks (its reserved memory runs a few
percent above what is allocated, more on a full device) and the estimate's own error (DeepSpeed's
estimators, activations of one measured micro batch)."""
GPU_RESERVE_BYTES = GIB
"""Fixed part of that reserve, for what does not scale with the device and is not in the budget when
it is read: NCCL's communicators (buffers per peer and channel, its kernels: a few hundred MiB per
process, created at the first collective), cuBLAS workspaces and DeepSpeed's buckets (small here:
sized to the trainable parameters). Without it a tight fit runs out of memory at step 1, and the
restart chooses the same again."""


@dataclass
class ZeroEstimate:
    """Bytes one worker needs at one ZeRO stage and offload; the first four sum to ``total_bytes``."""

    stage: int
    offload: str
    param_bytes: int  # frozen + trainable params on the device (stage 3: the partition plus the largest layer gathered)
    optimizer_bytes: int  # grads, fp32 master copy and Adam m, v of the trainable params on the device
    activation_bytes: int
    runtime_bytes: int  # the process beside the model (CPU workers: measured before loading; GPU: 0)
    total_bytes: int
    offloaded_bytes: int  # held in CPU RAM by offload
    reserve_bytes: int = 0  # of the budget it was chosen against, left unplanned (GPU workers)

    def worker_bytes(self, use_gpu: bool) -> int:
        """What the worker's own memory holds: the device's share, and on a CPU worker also what
        offload moved, since "offload to CPU" leaves it in the same RAM there."""
        return self.total_bytes + (0 if use_gpu else self.offloaded_bytes)

    def line(self, budget_bytes: int) -> str:
        """One line for the log: the choice, its estimate and the budget it was held against (less
        the reserve it left)."""
        cpu = f", +{self.offloaded_bytes / GIB:.2f} GiB in CPU RAM" if self.offloaded_bytes else ""
        runtime = f", runtime {self.runtime_bytes / GIB:.2f}" if self.runtime_bytes else ""
        budget = _budget_text(budget_bytes, self.reserve_bytes)
        return (
            f"zero_stage auto: stage {self.stage}, offload {self.offload}: "
            f"~{self.total_bytes / GIB:.2f} GiB per worker "
            f"(params {self.param_bytes / GIB:.2f}, optimizer {self.optimizer_bytes / GIB:.2f}, "
            f"activations {self.activation_bytes / GIB:.2f}{runtime}) of {budget}{cpu}"
        )


def gpu_reserve_bytes(budget_bytes: int) -> int:
    """What a GPU worker's ``budget_bytes`` keeps back from the estimate (see ``GPU_RESERVE_FRACTION``
    and ``GPU_RESERVE_BYTES``)."""
    return int(GPU_RESERVE_FRACTION * budget_bytes) + GPU_RESERVE_BYTES


def _budget_text(budget_bytes: int, reserve_bytes: int) -> str:
    """``17.52 GiB (19.50 less a 1.98 GiB reserve for NCCL, the allocator and buffers)``, or the budget."""
    usable = f"{max(0, budget_bytes - reserve_bytes) / GIB:.2f} GiB"
    if not reserve_bytes:
        return usable
    reserve = f"{reserve_bytes / GIB:.2f} GiB reserve for NCCL, the allocator and buffers"
    return f"{usable} ({budget_bytes / GIB:.2f} less a {reserve})"


def _ds_estimators():
    """DeepSpeed picks its accelerator at import; on a machine without CUDA it must be told."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    return estimate_zero2_model_states_mem_needs, estimate_zero3_model_states_mem_needs


def _trainable_states(trainable: int, grad_bytes: int, world: int, stage: int, offload: str) -> tuple[int, int]:
    """(on the device, in CPU RAM) bytes of the trainable params' grads and Adam states, params excluded.

    Stages 2 and 3 take DeepSpeed's figure less its own param part: stage 2 gives 2 + 18/world
    bytes per param (16-bit params whole; 16-bit grad, fp32 grad, fp32 master, m, v partitioned),
    stage 3 gives 18/world including the 2-byte param partition (DeepSpeed counts 2 bytes less
    there: its fp32 grads exist per sub-group only while the optimizer steps). Grads are
    ``grad_bytes`` each (the model's precision), so the difference to 16-bit is added.
    Stages 0 and 1 are not in DeepSpeed's estimators: grads stay whole, and stage 1 partitions
    the 16 fp32 bytes. Offloaded states live in CPU RAM: the 16 fp32 bytes per param partition
    (DeepSpeed's CPU figure is that summed over a node, times a 1.5 buffer factor).
    """
    part = -(-trainable // world)
    off_opt, off_params = offloads_optimizer(offload), offloads_params(offload)
    offloaded = _FP32_STATES * part if off_opt else 0
    if stage < 2:
        fp32 = 0 if off_opt else _FP32_STATES * (trainable if stage == 0 else part)
        return grad_bytes * trainable + fp32, offloaded
    zero2, zero3 = _ds_estimators()
    if stage == 2:
        _, gpu = zero2(trainable, num_gpus_per_node=world, num_nodes=1, cpu_offload=off_opt)
        states = gpu - _DS_BYTES * trainable
    else:  # DeepSpeed's figure counts offloaded params only together with an offloaded optimizer
        _, gpu, _ = zero3(
            trainable, 0, num_gpus_per_node=world, num_nodes=1, cpu_offload=off_opt, cpu_offload_params=off_params
        )
        states = gpu - (0 if off_opt and off_params else int(_DS_BYTES * trainable / world))
    if not off_opt:
        states += (grad_bytes - _DS_BYTES) * part
    return states, offloaded


def estimate(
    total_params: int,
    trainable_params: int,
    param_bytes_each: int,
    world_size: int,
    stage: int,
    offload: str,
    activation_bytes: int,
    largest_layer_params: int = 0,
    runtime_bytes: int = 0,
) -> ZeroEstimate:
    """Per-worker bytes of one micro batch's training step at ``stage`` with ``offload``.

    Counted: every parameter at ``param_bytes_each`` (frozen ones too: held whole at stages 0-2,
    partitioned over ``world_size`` at stage 3, in CPU RAM with offload "params"/"all"; at stage 3
    the largest layer, ``largest_layer_params``, is gathered whole while it runs); the grads and
    Adam states of the trainable params only (frozen ones have none, see ``_trainable_states``);
    the measured activations, which ZeRO does not partition; ``runtime_bytes``, what the process
    holds besides (on a CPU worker, measured before the backbone loads: interpreter, libraries,
    data). Not counted: communication buckets, allocator fragmentation and the CUDA context, which
    the budget has to leave room for.
    """
    if (
        stage not in (0, 1, 2, 3)
        or offload not in ("none", "optimizer", "params", "all")
        or (offloads_params(offload) and stage != 3)
        or (offload == "optimizer" and stage == 0)
    ):
        raise ValueError(
            f"stage {stage} with offload {offload!r}: offload 'optimizer' needs stage 1-3, 'params' and 'all' "
            "need stage 3"
        )
    if stage == 3:
        partition = -(-total_params // world_size) * param_bytes_each
        gathered = largest_layer_params * param_bytes_each
        params, offloaded_params = (gathered, partition) if offloads_params(offload) else (partition + gathered, 0)
    else:
        params, offloaded_params = total_params * param_bytes_each, 0
    optimizer, offloaded = _trainable_states(trainable_params, param_bytes_each, world_size, stage, offload)
    return ZeroEstimate(
        stage,
        offload,
        params,
        optimizer,
        activation_bytes,
        runtime_bytes,
        params + optimizer + activation_bytes + runtime_bytes,
        offloaded + offloaded_params,
    )


def measure_activation_bytes(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """Bytes autograd keeps for backward after one forward of this micro batch.

    Measured rather than modelled because what is saved depends on the method (a frozen
    backbone saves only what the path to the trainable parts needs). Parameters and buffers
    (and views of them) are left out, since they are counted as params; a storage saved twice
    counts once. Run the model in the mode, dtype and device training uses.
    """
    held = {t.untyped_storage().data_ptr() for t in itertools.chain(model.parameters(), model.buffers())}
    params = {id(p) for p in model.parameters()}  # ZeRO-3 weights gathered for the probe are new storages
    saved: dict[int, torch.UntypedStorage] = {}  # keeping the storages alive keeps their addresses unique

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if id(t) not in params and storage.data_ptr() not in held:
            saved.setdefault(storage.data_ptr(), storage)
        return t

    with (
        torch.enable_grad(),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        module_by_module(model),  # a backbone loaded partitioned (ZeRO 3) runs one module whole at a time
    ):
        model(input_ids, attention_mask)
    measured = sum(s.nbytes() for s in saved.values())
    saved.clear()
    if input_ids.device.type == "cpu":
        release_freed_heap()
    return measured


def release_freed_heap() -> None:
    """Give the heap pages freed since back to the OS (glibc's ``malloc_trim``; a no-op where the C
    library has none). A packed slot's measuring passes left ~1 GB freed but kept on a CPU worker, and
    every later pass there ran slower: the demo's evaluation 15% and its steps 6%, 50 s of 7 min
    (docs/SCALING.md, "What measuring a member cost")."""
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    if trim is not None:
        trim(0)


# device -> this process's peak before a reset wiped it (loading, the prompt pass): ``peak_memory_mb`` counts it
_wiped_peaks: dict[str, int] = {}


def _peak_bytes(device: torch.device) -> int:
    """This process's peak memory on ``device`` since it started or its peak was last reset."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _high_water_bytes(device: torch.device) -> int | None:
    """Reset this process's peak memory on ``device`` and return the current level (None where the
    peak cannot be reset: CPU RSS peaks reset through Linux's /proc/self/clear_refs only). The peak
    it wipes is kept for ``peak_memory_mb`` (resetting VmHWM resets ``ru_maxrss`` too)."""
    _wiped_peaks[str(device)] = max(_wiped_peaks.get(str(device), 0), _peak_bytes(device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        return _vm_high_water()
    except OSError:
        return None


def _vm_high_water() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def measure_step_peak_bytes(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int | None:
    """How far one training pass of this micro batch raises the worker's peak memory: forward and
    backward (what backward allocates while it runs included, and on a CPU what the allocator keeps),
    or the forward alone on a model ZeRO 3 partitioned (its backward needs the engine's hooks; the
    forward gathers one module at a time). None where a peak cannot be reset. Measured first, before
    other probes leave allocations behind; the gradients are dropped after."""
    device = input_ids.device
    before = _high_water_bytes(device)
    if before is None:
        return None
    partitioned = is_partitioned(model)
    with torch.enable_grad(), module_by_module(model):  # a no-op on a model that is not partitioned
        out = model(input_ids, attention_mask).float().sum()
        if not partitioned:
            out.backward()
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _vm_high_water()
    del out
    for p in model.parameters():
        p.grad = None
    return max(0, peak - before)


def choose(
    total_params: int,
    trainable_params: int,
    param_bytes_each: int,
    world_size: int,
    activation_bytes: int,
    budget_bytes: int,
    largest_layer_params: int = 0,
    runtime_bytes: int = 0,
    *,
    use_gpu: bool,
    offload_device: str = "cpu",
) -> ZeroEstimate:
    """The first of ``CANDIDATES`` whose estimate fits ``budget_bytes`` (on a GPU, less
    ``gpu_reserve_bytes``); ResourceError if none does.

    On CPU workers offload would move states from RAM to the same RAM, so only the stages
    without offload are tried there. Offload to NVMe exists at ZeRO 3 only (DeepSpeed's ZeRO 1
    and 2 keep offloaded states in CPU RAM whatever the device), so with ``offload_device`` nvme
    the offloading candidates are stage 3's.
    """
    reserve = gpu_reserve_bytes(budget_bytes) if use_gpu else 0
    tried = [
        estimate(
            total_params,
            trainable_params,
            param_bytes_each,
            world_size,
            stage,
            offload,
            activation_bytes,
            largest_layer_params,
            runtime_bytes,
        )
        for stage, offload in CANDIDATES
        if offload == "none" or (use_gpu and (stage == 3 or offload_device == "cpu"))
    ]
    for est in tried:
        if est.total_bytes <= budget_bytes - reserve:
            return dataclasses.replace(est, reserve_bytes=reserve)
    best = min(tried, key=lambda e: e.total_bytes)
    raise ResourceError(
        f"zero_stage auto: nothing fits; the smallest estimate is stage {best.stage}, offload {best.offload} at "
        f"~{best.total_bytes / GIB:.2f} GiB per worker (params {best.param_bytes / GIB:.2f}, optimizer "
        f"{best.optimizer_bytes / GIB:.2f}, activations {best.activation_bytes / GIB:.2f}) but a worker has "
        f"{_budget_text(budget_bytes, reserve)}; use more workers (train.num_workers), a smaller "
        f"train.micro_batch_size or a smaller backbone"
    )


def seats_that_fit(held_bytes: int, member_bytes: list[int], budget_bytes: int, use_gpu: bool) -> int:
    """How many of these members, in order, a packed slot trains at once: what it holds without them
    (backbone, data, runtime) plus each one's measured step peak, within the worker's budget (on a
    GPU less ``gpu_reserve_bytes``). At least 1: a lone member needs what a solo trial does, which the
    run's plan let through."""
    room = budget_bytes - (gpu_reserve_bytes(budget_bytes) if use_gpu else 0) - held_bytes
    seats = 0
    for cost in member_bytes:
        if cost > room:
            break
        room -= cost
        seats += 1
    return max(1, seats)


def held_bytes(device: torch.device) -> int:
    """What this worker holds now: its allocations on a GPU, its resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    import psutil

    return psutil.Process().memory_info().rss


def worker_budget_bytes(use_gpu: bool, workers_per_node: int, device: torch.device | None = None) -> int:
    """Memory one worker may use in all, what it already holds included (the estimate counts the
    model it has loaded, so free memory alone would count that twice): its own GPU ``device``'s free
    memory plus what this process has allocated there (a worker has a GPU to itself; Ray Train may
    show it every GPU of its node), or its share of the node's available RAM plus its resident set.
    On a GPU ``choose`` keeps a reserve of it back (``gpu_reserve_bytes``)."""
    if workers_per_node < 1:
        raise ValueError(f"workers_per_node must be at least 1 (got {workers_per_node})")
    if use_gpu:
        if not torch.cuda.is_available():
            raise ResourceError(
                "train.use_gpu is true but this process sees no CUDA device; "
                "set train.use_gpu: false or run on a GPU node"
            )
        device = device if device is not None else torch.device("cuda", torch.cuda.current_device())
        return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_allocated(device)
    import psutil

    return psutil.virtual_memory().available // workers_per_node + psutil.Process().memory_info().rss


def model_counts(model: nn.Module, precision: str) -> dict[str, int]:
    """What the estimators need, read off a built model (whole parameter sizes, also where ZeRO 3
    already partitioned it at load time): all and
    trainable params, bytes per param, and the largest single module's own params (what
    ZeRO-3 gathers whole while that layer runs)."""
    return {
        "total_params": sum(full_numel(p) for p in model.parameters()),
        "trainable_params": sum(full_numel(p) for p in model.parameters() if p.requires_grad),
        "param_bytes_each": 4 if precision == "fp32" else 2,
        "largest_layer_params": largest_module_params(model),
    }


def settle_zero(
    model: nn.Module,
    train: TrainConfig,
    *,
    world: int,
    local_world: int,
    device: torch.device,
    batch: dict[str, torch.Tensor],
    runtime_bytes: int,
    log: bool,
) -> tuple[TrainConfig, ZeroEstimate]:
    """The ZeRO setting this run uses and its memory estimate (DeepSpeed's estimators plus the
    activations of one measured micro batch and the process's ``runtime_bytes``, the most any rank
    measured). ``zero_stage: auto`` takes the first setting that fits the smallest budget of any
    rank, and says so in one line (where ``log``): every rank decides from the same numbers, since
    ranks that chose differently would build different engines and hang in their first collective."""
    import torch.distributed as dist

    from skray.train.evaluate import all_reduce

    counts = model_counts(model, train.precision)
    dtype = dtype_of(train.precision)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        # First, before any other allocation: what the step raises the peak by, where measurable.
        activations = measure_step_peak_bytes(model, batch["input_ids"], batch["attention_mask"])
        if activations is None:
            activations = measure_activation_bytes(model, batch["input_ids"], batch["attention_mask"])
    activations, runtime_bytes = (int(v) for v in all_reduce([activations, runtime_bytes], op=dist.ReduceOp.MAX))
    if train.zero_stage != "auto":
        est = estimate(
            **counts,
            world_size=world,
            stage=train.zero_stage,
            offload=train.offload,
            activation_bytes=activations,
            runtime_bytes=runtime_bytes,
        )
        return train, est
    own = float(worker_budget_bytes(train.use_gpu, local_world, device))
    (budget,) = all_reduce([own], op=dist.ReduceOp.MIN)
    est = choose(
        **counts,
        world_size=world,
        activation_bytes=activations,
        budget_bytes=int(budget),
        runtime_bytes=runtime_bytes,
        use_gpu=train.use_gpu,
        offload_device=train.offload_device,
    )
    if log:
        print(est.line(int(budget)), flush=True)
    return train.model_copy(update={"zero_stage": est.stage, "offload": est.offload}), est


def runtime_bytes(device: torch.device) -> int:
    """What this worker holds before its backbone loads, counted in its estimate: on a CPU worker
    its resident set (Python, torch, DeepSpeed, Ray's worker, tokenizer and data, 0.5-1 GiB), which
    shares RAM with the model; on a GPU worker 0 (the estimate is of device memory)."""
    if device.type == "cuda":
        return 0
    import psutil

    return psutil.Process().memory_info().rss


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this worker since its process started, loading included (also where the ZeRO
    probe reset the peak since): CUDA's peak allocated on its device, or the process's peak resident
    set (Ray Train starts a process per worker)."""
    return max(_peak_bytes(device), _wiped_peaks.get(str(device), 0)) / 2**20
