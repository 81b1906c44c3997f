"""A Ray Train TorchTrainer for one experiment: workers, resources, storage."""

from __future__ import annotations

import os

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from skray.config import ExperimentConfig
from skray.train.deepspeed import process_group_backend
from skray.train.packed import packed_loop_per_worker
from skray.train.recipe import train_loop_per_worker

# glibc raises its mmap threshold each time a large block is freed, so the weights ZeRO 3 gathers and
# frees for every module end up in a heap it never returns to the system: a ZeRO-3 worker of a 1.1B
# backbone peaked at 4.81 GiB RSS with glibc's default and 3.34 GiB with the threshold fixed at 128 KiB,
# at the same step time (docs/SCALING.md). Only at ZeRO 3: below it nothing is gathered, and a fresh
# mapping for every tensor above 128 KiB slowed the ZeRO-2 demo from 4.5 to 3.1 samples/s. Values the
# user set win.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def build_trainer(
    cfg: ExperimentConfig,
    cpus_per_worker: float,
    storage_path: str,
    name: str,
    callbacks: list | None = None,
    log_dir: str | None = None,
    slot: dict | None = None,
) -> TorchTrainer:
    """Ray Train's trainer for one run; with a ``log_dir`` each worker writes its output to
    ``<log_dir>/<name>-rank<r>.log``. With ``slot`` (the broker's handle, the slot's number, its
    seats and the run dir) the workers run a packed slot (``skray.train.packed``) instead."""
    t = cfg.train
    allocator_env = {k: os.environ.get(k, v) for k, v in ALLOCATOR_ENV.items()}
    resources = {"CPU": cpus_per_worker}
    if t.memory_per_worker_gb is not None:
        resources["memory"] = int(t.memory_per_worker_gb * 2**30)
    return TorchTrainer(
        packed_loop_per_worker if slot else train_loop_per_worker,
        train_loop_config={
            "experiment": cfg.model_dump(),
            "cpus_per_worker": cpus_per_worker,
            "log": f"{log_dir}/{name}" if log_dir else None,
            **(slot or {}),
        },
        torch_config=TorchConfig(backend=process_group_backend(t.use_gpu)),
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=callbacks or [],
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=t.max_failures),
            worker_runtime_env={"env_vars": allocator_env} if t.zero_stage == 3 else None,
        ),
    )
