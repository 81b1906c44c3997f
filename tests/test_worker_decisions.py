"""What the workers decide for themselves before building the engine: the ZeRO setting and the precision
(alike on every rank, and kept for a restart), the device Ray assigned, and the peak memory they report."""

import json
import os

import pytest
import ray.train
import torch
from torch import nn

from skray.config import TrainConfig, resolve_device
from skray.train import memory
from skray.train.checkpoint import RunState, read_run_state, write_resume_state
from skray.train.memory import estimate, measure_step_peak_bytes, model_counts, peak_memory_mb, settle_zero
from skray.train.recipe import restored_train, settle_precision, worker_device

os.environ.setdefault("DS_ACCELERATOR", "cpu")
MIB = 2**20


def _settle_on_rank(rank: int, store: str, out: str, activations: list, runtime: list, budget: int, caps: list) -> None:
    """One rank of a 2-rank gloo group whose measurements are its own, as on two real workers."""
    import torch.distributed as dist

    memory.measure_step_peak_bytes = lambda *_: activations[rank]
    memory.worker_budget_bytes = lambda *_, **__: budget
    torch.cuda.get_device_capability = lambda *_: caps[rank]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    ids = torch.ones(1, 4, dtype=torch.long)
    train, est = settle_zero(
        nn.Linear(100, 100, bias=False),
        TrainConfig(zero_stage="auto", use_gpu=False, precision="fp32"),
        world=2,
        local_world=2,
        device=torch.device("cpu"),
        batch={"input_ids": ids, "attention_mask": ids},
        runtime_bytes=runtime[rank],
        log=False,
    )
    precision = settle_precision(TrainConfig(use_gpu=True, precision="auto"), torch.device("cpu"), log=False)
    dist.destroy_process_group()
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump([train.zero_stage, train.offload, est.activation_bytes, est.runtime_bytes, precision.precision], f)


def test_ranks_near_a_boundary_settle_alike(tmp_path):
    """Rank 0 alone fits ZeRO 0, rank 1 (a little more activation and runtime memory) needs ZeRO 1, and
    only rank 0's GPU does bf16: decided per rank, the two would build different engines and hang."""
    counts = model_counts(nn.Linear(100, 100, bias=False), "fp32")
    activations, runtime = [MIB, MIB + 32 * 1024], [100 * MIB, 100 * MIB + 16 * 1024]
    budget = estimate(**counts, world_size=2, stage=0, offload="none", activation_bytes=MIB, runtime_bytes=runtime[0])
    args = (str(tmp_path / "store"), str(tmp_path), activations, runtime, budget.total_bytes, [(8, 0), (7, 5)])
    torch.multiprocessing.start_processes(_settle_on_rank, args=args, nprocs=2, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1] == [1, "none", activations[1], runtime[1], "fp32"]


@pytest.mark.parametrize(("capability", "precision"), [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp32")])
def test_precision_auto_follows_the_gpus_compute_capability(monkeypatch, capsys, capability, precision):
    """V100 and T4 report bf16 support (emulated, slow): auto trains them in fp32, and says so."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: capability)
    auto = TrainConfig(use_gpu=True, precision="auto")
    assert settle_precision(auto, torch.device("cuda", 0), log=True).precision == precision
    assert capsys.readouterr().out.startswith(f"precision auto: {precision}: ")
    assert settle_precision(auto.model_copy(update={"use_gpu": False}), torch.device("cpu"), log=True).precision == (
        "fp32"
    )
    assert settle_precision(auto.model_copy(update={"precision": "fp16"}), torch.device("cpu"), log=True) == (
        auto.model_copy(update={"precision": "fp16"})
    )


def test_the_driver_leaves_gpu_precision_to_the_workers():
    auto = TrainConfig(use_gpu="auto", precision="auto")
    assert resolve_device(auto, 2, 2).precision == "auto"  # the driver may see no GPU, or another kind
    assert resolve_device(auto, 0, 2).precision == "fp32"


class _Engine:
    """What ``write_resume_state`` needs of a DeepSpeed engine here: somewhere to save to."""

    def save_checkpoint(self, directory, **_):
        os.makedirs(directory, exist_ok=True)


def test_a_restart_builds_with_what_wrote_its_checkpoint(tmp_path):
    """The settled stage, offload and precision are read before any engine exists, and win over auto."""
    state = RunState(step=250, zero_stage=3, offload="optimizer", precision="fp32")
    write_resume_state(_Engine(), tmp_path, state, {"w": torch.zeros(2)}, {"step": 250})
    prior = read_run_state(ray.train.Checkpoint.from_directory(str(tmp_path)))
    assert prior == state
    auto = TrainConfig(zero_stage="auto", use_gpu=True, precision="auto")
    restarted = restored_train(auto, prior)
    assert (restarted.zero_stage, restarted.offload, restarted.precision) == (3, "optimizer", "fp32")
    older = tmp_path / "older"  # a checkpoint from before the state was kept beside it: decided afresh
    older.mkdir()
    assert read_run_state(ray.train.Checkpoint.from_directory(str(older))) is None
    assert restored_train(auto, None) == auto


class _Allocator:
    """torch.cuda's allocator statistics, as a CPU-only test can have them."""

    def __init__(self):
        self.allocated = self.peak = 0

    def alloc(self, n: int) -> None:
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def reset_peak_memory_stats(self, *_):
        self.peak = self.allocated

    def memory_allocated(self, *_):
        return self.allocated

    def max_memory_allocated(self, *_):
        return self.peak


class _OnCuda:
    device = torch.device("cuda", 0)


class _Step(nn.Module):
    """A training pass that allocates 512 MiB on the (fake) GPU and frees it."""

    def __init__(self, allocator: _Allocator):
        super().__init__()
        self.allocator, self.w = allocator, nn.Parameter(torch.ones(()))

    def forward(self, input_ids, attention_mask):
        self.allocator.alloc(512 * MIB)
        self.allocator.alloc(-512 * MIB)
        return self.w * 2


def test_gpu_peak_memory_counts_loading_though_the_zero_probe_resets_it(monkeypatch):
    allocator = _Allocator()
    for name in ("reset_peak_memory_stats", "memory_allocated", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, getattr(allocator, name))
    monkeypatch.setattr(memory, "_wiped_peaks", {})
    allocator.alloc(3 * 1024 * MIB)  # loading: 3 GiB at its peak, 1 GiB of it kept
    allocator.alloc(-2 * 1024 * MIB)
    assert measure_step_peak_bytes(_Step(allocator), _OnCuda(), _OnCuda()) == 512 * MIB
    assert peak_memory_mb(_OnCuda.device) == 3 * 1024
    allocator.alloc(4 * 1024 * MIB)  # training past the loading peak
    assert peak_memory_mb(_OnCuda.device) == 5 * 1024


def test_cpu_peak_memory_counts_loading_though_the_zero_probe_resets_it(monkeypatch):
    """Resetting VmHWM through /proc resets ``ru_maxrss`` too."""
    monkeypatch.setattr(memory, "_wiped_peaks", {})
    loading = b"\1" * (256 * MIB)  # a transient of loading, freed before the probe
    del loading
    level = peak_memory_mb(torch.device("cpu"))
    measure_step_peak_bytes(_Step(_Allocator()), torch.ones(1, 2), torch.ones(1, 2))  # resets the peak
    assert peak_memory_mb(torch.device("cpu")) >= level


def test_the_device_is_the_one_ray_assigned(monkeypatch):
    """Local rank 0, but Ray gave this worker its node's GPU 3 (CUDA_VISIBLE_DEVICES not shared)."""
    import ray.train.torch

    class Context:
        def get_local_rank(self):
            return 0

    monkeypatch.setattr(ray.train, "get_context", Context)
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cuda", 3))
    assert worker_device(True) == torch.device("cuda", 3)
    assert worker_device(False) == torch.device("cpu")


def test_auto_with_nvme_offloads_at_zero_3_only(monkeypatch):
    """The worker's ``auto`` hands the offload device to the choice: with NVMe it cannot pick ZeRO 2 with
    the optimizer offloaded (DeepSpeed's ZeRO 1 and 2 would keep it in CPU RAM), but ZeRO 3 with it."""
    from tests.test_memory import gpu_budget

    model = nn.Linear(1000, 1000, bias=False)
    counts = model_counts(model, "fp32")
    need = max(
        estimate(**counts, world_size=4, stage=stage, offload="optimizer", activation_bytes=MIB).total_bytes
        for stage in (2, 3)
    )
    monkeypatch.setattr(memory, "measure_step_peak_bytes", lambda *_: MIB)
    monkeypatch.setattr(memory, "worker_budget_bytes", lambda *_, **__: gpu_budget(need))
    ids = torch.ones(1, 4, dtype=torch.long)
    settled = {}
    for device in ("cpu", "nvme"):
        train = TrainConfig(zero_stage="auto", use_gpu=True, precision="fp32", offload_device=device, nvme_path="/nvme")
        chosen, _ = settle_zero(
            model,
            train,
            world=4,
            local_world=4,
            device=torch.device("cpu"),
            batch={"input_ids": ids, "attention_mask": ids},
            runtime_bytes=0,
            log=False,
        )
        settled[device] = (chosen.zero_stage, chosen.offload)
    assert settled == {"cpu": (2, "optimizer"), "nvme": (3, "optimizer")}


def test_nvme_swap_buffers_are_sized_before_the_backbone_loads(tiny_experiment):
    """ZeRO 3 with parameters on NVMe: every weight passes through the swapper as zero.Init builds the
    backbone, so the loading config already sizes its buffers for the largest weight (the embedding)."""
    from skray.train.recipe import zero3_loading_config

    nvme = {"zero_stage": 3, "offload": "params", "offload_device": "nvme", "nvme_path": "/nvme", "use_gpu": True}
    cfg = tiny_experiment(train__num_workers=2)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=nvme)})
    swap = zero3_loading_config(cfg)["zero_optimization"]["offload_param"]
    assert swap["buffer_size"] == 30522 * 32 // 2  # the tiny Llama's embedding over 2 workers
    below = cfg.model_copy(update={"train": cfg.train.model_copy(update={"zero_stage": 2, "offload": "none"})})
    assert zero3_loading_config(below) is None
