"""zero_stage auto: measured activations, per-stage estimates, the choice, and DeepSpeed's own figures."""

import math
import os

import pytest
import torch

from skray.config import MethodConfig
from skray.errors import ResourceError
from skray.methods import build_model
from skray.train.memory import (
    CANDIDATES,
    GIB,
    GPU_RESERVE_BYTES,
    GPU_RESERVE_FRACTION,
    ZeroEstimate,
    choose,
    estimate,
    gpu_reserve_bytes,
    measure_activation_bytes,
    measure_step_peak_bytes,
    worker_budget_bytes,
)

os.environ.setdefault("DS_ACCELERATOR", "cpu")
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs  # noqa: E402
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs  # noqa: E402

N = 10_000_000  # an all-trainable model, divisible by the world sizes used


def gpu_budget(need: int) -> int:
    """The smallest GPU worker budget (within a byte) that still holds ``need`` once the reserve is kept back."""
    return math.ceil((need + GPU_RESERVE_BYTES) / (1 - GPU_RESERVE_FRACTION)) + 1


def sk_model(decoder):
    return build_model(decoder, MethodConfig(kind="sk_prefix", head="linear", prefix_length=4), ["a", "b"])


def ids(batch, length):
    return torch.randint(1, 1000, (batch, length)), torch.ones(batch, length, dtype=torch.long)


def test_activation_bytes_grow_with_batch_and_length(decoder):
    model = sk_model(decoder)
    small = measure_activation_bytes(model, *ids(2, 16))
    assert small > 0
    assert measure_activation_bytes(model, *ids(4, 16)) > small
    assert measure_activation_bytes(model, *ids(2, 64)) > small


def test_activation_bytes_leave_out_parameters(decoder):
    """A frozen model saves nothing for backward; the adapter's own weights are not activations."""
    model = sk_model(decoder)
    x = ids(2, 16)
    frozen = measure_activation_bytes(model.requires_grad_(False), *x)
    assert frozen == 0
    full = measure_activation_bytes(model.requires_grad_(True), *x)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert 0 < full < params  # the embedding table (30522 x 32) alone dwarfs these activations


class Allocates(torch.nn.Module):
    """Forward makes a 256 MiB activation (saved for backward), backward a gradient as large."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, input_ids, attention_mask):
        return torch.ones(2**26) * self.w


def test_step_peak_counts_forward_and_backward_and_drops_the_gradients():
    model = Allocates()
    peak = measure_step_peak_bytes(model, *ids(1, 4))
    assert peak >= 2**28  # at least the activation (the process's peak RSS, reset through /proc on Linux)
    assert model.w.grad is None


def test_total_non_increasing_from_stage_0_to_3_when_everything_trains():
    totals = [estimate(N, N, 4, 2, stage, "none", 10**6).total_bytes for stage in range(4)]
    assert totals == sorted(totals, reverse=True)
    assert totals[0] > totals[3]


def test_frozen_params_whole_below_stage_3_and_partitioned_at_stage_3():
    frozen, trainable, world = 12_000_000, 1_000, 4
    for stage in range(3):
        assert (
            estimate(frozen + trainable, trainable, 4, world, stage, "none", 0).param_bytes == (frozen + trainable) * 4
        )
    at3 = estimate(frozen, 0, 4, world, 3, "none", 0)
    assert at3.param_bytes == frozen * 4 // world
    assert at3.optimizer_bytes == 0  # nothing trains: no grads, no Adam states
    assert (
        estimate(frozen, 0, 4, world, 3, "none", 0, largest_layer_params=500).param_bytes == (frozen // world + 500) * 4
    )


def test_offload_moves_states_and_params_to_cpu_ram():
    none, opt, params, everything = (
        estimate(N, N, 2, 2, 3, off, 0, largest_layer_params=100) for off in ("none", "optimizer", "params", "all")
    )
    assert opt.optimizer_bytes == 0
    assert opt.offloaded_bytes == 16 * N // 2
    assert opt.param_bytes == none.param_bytes
    assert params.param_bytes == everything.param_bytes == 100 * 2  # only the gathered layer stays on the device
    assert params.optimizer_bytes == none.optimizer_bytes  # the Adam states stay
    assert params.offloaded_bytes == 2 * N // 2
    assert everything.offloaded_bytes == 16 * N // 2 + 2 * N // 2
    assert none.total_bytes > opt.total_bytes > everything.total_bytes
    assert none.total_bytes > params.total_bytes > everything.total_bytes
    for off in ("params", "all"):
        with pytest.raises(ValueError, match="need stage 3"):
            estimate(N, N, 2, 2, 2, off, 0)


def test_a_frozen_backbone_fits_by_offloading_its_params_not_the_optimizer():
    """Frozen weights dwarf what trains: offloading the optimizer barely helps, the params do."""
    args = {"total_params": 1000 * N, "trainable_params": N, "param_bytes_each": 2, "world_size": 2}
    by = {o: estimate(**args, stage=3, offload=o, activation_bytes=0).total_bytes for o in ("optimizer", "params")}
    assert by["params"] < by["optimizer"] / 10
    chosen = choose(**args, activation_bytes=0, budget_bytes=gpu_budget(by["params"]), use_gpu=True)
    assert (chosen.stage, chosen.offload) == (3, "params")


def test_a_cpu_worker_holds_what_it_offloads():
    est = estimate(N, N, 2, 2, 3, "all", 0, largest_layer_params=100)
    assert est.worker_bytes(use_gpu=True) == est.total_bytes
    assert est.worker_bytes(use_gpu=False) == est.total_bytes + est.offloaded_bytes


def test_runtime_is_part_of_the_estimate_and_its_line():
    without = estimate(N, N, 4, 1, 0, "none", 0)
    est = estimate(N, N, 4, 1, 0, "none", 0, runtime_bytes=GIB)
    assert est.total_bytes == without.total_bytes + GIB
    assert "runtime 1.00)" in est.line(8 * GIB)


def test_stages_agree_where_nothing_is_partitioned():
    """At one worker ZeRO partitions nothing: stage 0 and 1 (worked out here) equal stage 2 (DeepSpeed's)."""
    totals = {estimate(N + 5, N, 4, 1, stage, "none", 7).total_bytes for stage in range(3)}
    assert len(totals) == 1


@pytest.mark.parametrize("world", [1, 2, 8])
def test_stage_2_and_3_agree_with_deepspeed(world):
    """All-trainable 16-bit model: params + optimizer is exactly DeepSpeed's per-GPU figure."""
    _, gpu2 = estimate_zero2_model_states_mem_needs(N, num_gpus_per_node=world, cpu_offload=False)
    at2 = estimate(N, N, 2, world, 2, "none", 0)
    assert at2.param_bytes + at2.optimizer_bytes == gpu2
    assert at2.optimizer_bytes == 18 * N // world

    _, gpu3, _ = estimate_zero3_model_states_mem_needs(N, 0, num_gpus_per_node=world, cpu_offload=False)
    at3 = estimate(N, N, 2, world, 3, "none", 0)
    assert at3.param_bytes + at3.optimizer_bytes == gpu3
    assert at3.optimizer_bytes == 16 * N // world

    _, gpu2_off = estimate_zero2_model_states_mem_needs(N, num_gpus_per_node=world, cpu_offload=True)
    assert estimate(N, N, 2, world, 2, "optimizer", 0).total_bytes == gpu2_off
    _, gpu3_off, _ = estimate_zero3_model_states_mem_needs(
        N, 0, num_gpus_per_node=world, cpu_offload=True, cpu_offload_params=False
    )
    assert estimate(N, N, 2, world, 3, "optimizer", 0).total_bytes == gpu3_off


def test_choose_stage_0_with_room_and_more_partitioning_when_tight():
    args = {"total_params": N, "trainable_params": N, "param_bytes_each": 4, "world_size": 4, "activation_bytes": 10**6}
    assert choose(**args, budget_bytes=100 * GIB, use_gpu=True).stage == 0
    by_setting = {(s, o): estimate(**args, stage=s, offload=o).total_bytes for s, o in CANDIDATES}
    tight = choose(**args, budget_bytes=gpu_budget(by_setting[(3, "none")]), use_gpu=True)
    assert (tight.stage, tight.offload) == (3, "none")
    offloaded = choose(**args, budget_bytes=gpu_budget(by_setting[(3, "optimizer")]), use_gpu=True)
    assert (offloaded.stage, offloaded.offload) == (3, "optimizer")
    assert offloaded.line(by_setting[(3, "optimizer")]).startswith("zero_stage auto: stage 3, offload optimizer: ~")


def test_choose_on_cpu_never_offloads():
    args = {"total_params": N, "trainable_params": N, "param_bytes_each": 4, "world_size": 4, "activation_bytes": 10**6}
    fits_only_offloaded = estimate(**args, stage=3, offload="optimizer").total_bytes
    assert choose(**args, budget_bytes=gpu_budget(fits_only_offloaded), use_gpu=True).offload == "optimizer"
    with pytest.raises(ResourceError, match="stage 3, offload none"):
        choose(**args, budget_bytes=fits_only_offloaded, use_gpu=False)


def test_choose_raises_one_line_when_nothing_fits():
    with pytest.raises(ResourceError) as err:
        choose(N, N, 4, 2, activation_bytes=4 * GIB, budget_bytes=GIB, use_gpu=True)
    msg = str(err.value)
    assert "\n" not in msg
    assert "stage 3, offload all" in msg
    assert "a worker has 0.00 GiB (1.00 less a 1.05 GiB reserve for NCCL, the allocator and buffers)" in msg
    assert "num_workers" in msg
    assert "micro_batch_size" in msg
    assert "smaller backbone" in msg


def test_line_reads_like_the_log():
    est = ZeroEstimate(2, "none", GIB // 2, GIB // 100, int(0.72 * GIB), 0, GIB // 2 + GIB // 100 + int(0.72 * GIB), 0)
    assert est.line(20 * GIB) == (
        "zero_stage auto: stage 2, offload none: ~1.23 GiB per worker "
        "(params 0.50, optimizer 0.01, activations 0.72) of 20.00 GiB"
    )


def test_a_gpu_fit_keeps_a_reserve_back():
    """NCCL, the allocator's fragmentation and engine buffers are not in the estimate: on a GPU a
    setting that fits the raw budget but not the budget less the reserve goes to the next candidate
    (on a CPU worker, without a reserve, it is taken), and the log line states the reserve."""
    # A 10B frozen backbone in bf16 (18.6 GiB) on 4 GPUs: stages 0-2 hold it whole, stage 3 a quarter.
    args = {"total_params": 1000 * N, "trainable_params": N, "param_bytes_each": 2, "world_size": 4}
    args["activation_bytes"] = GIB
    need = estimate(**args, stage=0, offload="none").total_bytes
    assert gpu_reserve_bytes(20 * GIB) == GIB + GIB  # 5% of 20 GiB, and 1 GiB
    assert choose(**args, budget_bytes=need, use_gpu=False).stage == 0
    assert choose(**args, budget_bytes=need, use_gpu=True).stage == 3
    assert choose(**args, budget_bytes=gpu_budget(need) - 2**20, use_gpu=True).stage == 1  # a MiB short
    at_edge = choose(**args, budget_bytes=gpu_budget(need), use_gpu=True)
    assert at_edge.stage == 0
    assert at_edge.reserve_bytes == gpu_reserve_bytes(gpu_budget(need))
    budget, reserve = gpu_budget(need) / GIB, at_edge.reserve_bytes / GIB
    assert at_edge.line(gpu_budget(need)).endswith(
        f"of {budget - reserve:.2f} GiB ({budget:.2f} less a {reserve:.2f} GiB reserve for NCCL, the allocator "
        "and buffers)"
    )


def test_auto_offloads_to_nvme_at_zero_3_only():
    """DeepSpeed's ZeRO 1 and 2 keep offloaded states in CPU RAM whatever the device: with nvme, auto
    skips stage 2 with the optimizer offloaded and offloads at stage 3."""
    args = {"total_params": N, "trainable_params": N, "param_bytes_each": 4, "world_size": 4, "activation_bytes": 10**6}
    budget = gpu_budget(estimate(**args, stage=2, offload="optimizer").total_bytes)
    cpu = choose(**args, budget_bytes=budget, use_gpu=True)
    assert (cpu.stage, cpu.offload) == (2, "optimizer")
    nvme = choose(**args, budget_bytes=budget, use_gpu=True, offload_device="nvme")
    assert (nvme.stage, nvme.offload) == (3, "optimizer")
    roomy = choose(**args, budget_bytes=100 * GIB, use_gpu=True, offload_device="nvme")
    assert (roomy.stage, roomy.offload) == (0, "none")  # nothing offloaded: the device does not matter


def test_cpu_budget_is_a_share_of_available_ram():
    import psutil

    one, two = worker_budget_bytes(False, 1), worker_budget_bytes(False, 2)
    assert 0 < two < one <= psutil.virtual_memory().total
    with pytest.raises(ValueError, match="workers_per_node must be at least 1"):
        worker_budget_bytes(False, 0)


def test_line_names_what_offload_keeps_in_cpu_ram():
    est = estimate(N, N, 2, 2, 3, "optimizer", 0)
    assert est.line(GIB).endswith(f"of 1.00 GiB, +{16 * N // 2 / GIB:.2f} GiB in CPU RAM")


def test_gpu_budget_reads_the_workers_own_device(monkeypatch):
    """Ray Train may show a worker every GPU of its node: the budget is that of the worker's device, not GPU 0."""
    free = {0: 1 * GIB, 1: 7 * GIB}
    held = {0: 0, 1: 2 * GIB}  # what this worker has already put on its GPU (the model, the probe)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free[torch.device(device).index], 80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: held[torch.device(device).index])
    assert worker_budget_bytes(True, 2, torch.device("cuda:1")) == 9 * GIB  # counted once: free + already held


def test_cpu_budget_counts_what_the_worker_already_holds(monkeypatch):
    """The estimate counts the loaded model; the budget must too, or the model is counted twice."""
    import psutil

    class NothingFree:
        available = 0

    monkeypatch.setattr(psutil, "virtual_memory", lambda: NothingFree())
    before = psutil.Process().memory_info().rss  # read on both sides: the process's own pages move meanwhile
    budget = worker_budget_bytes(False, 2)
    after = psutil.Process().memory_info().rss
    assert 0 < min(before, after) <= budget <= max(before, after)


def test_param_peak_only_samples_a_model_that_gathers(decoder):
    """A backbone held whole (ZeRO 0-2) holds the same bytes all along: ParamPeak reads them when
    attached and adds no hook to its modules (a sample on every module's forward cost a solo trial
    most of its step-0 evaluation); a ZeRO-3 backbone is sampled module by module
    (tests/test_ray_runs.py::test_zero3_never_holds_the_whole_backbone_from_load_on)."""
    from skray.partitioned import ParamPeak

    model = decoder.model
    whole = sum(p.numel() * p.element_size() for p in model.parameters())
    peak = ParamPeak(model)
    assert not any(m._forward_hooks or m._backward_pre_hooks for m in model.modules())
    model(*ids(2, 5))
    assert peak.sample() == whole
    assert peak.detach() == whole
