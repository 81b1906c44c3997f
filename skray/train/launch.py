"""A Ray Train TorchTrainer for one experiment: workers, resources, storage."""

from __future__ import annotations

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from skray.config import ExperimentConfig
from skray.train.deepspeed import process_group_backend
from skray.train.recipe import train_loop_per_worker


def build_trainer(
    cfg: ExperimentConfig, cpus_per_worker: float, storage_path: str, name: str, callbacks: list | None = None
) -> TorchTrainer:
    t = cfg.train
    resources = {"CPU": cpus_per_worker}
    if t.memory_per_worker_gb is not None:
        resources["memory"] = int(t.memory_per_worker_gb * 2**30)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": cfg.model_dump(), "cpus_per_worker": cpus_per_worker},
        torch_config=TorchConfig(backend=process_group_backend(t.use_gpu)),
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=callbacks or [],
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=t.max_failures),
        ),
    )
