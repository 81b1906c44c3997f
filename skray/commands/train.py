"""`skray train`: one run of the experiment as written."""

from __future__ import annotations

from typing import Any

from ray import tune

from skray.commands.base import Command
from skray.config import ExperimentConfig


class Train(Command):
    name = "train"
    help = "one SK-Tuning run (Ray Train + DeepSpeed)"

    def param_space(self, cfg: ExperimentConfig) -> dict[str, Any]:
        m = cfg.method
        return {"method": m.kind, "wording": m.wording, "prefix_length": m.prefix_length, "lr": cfg.train.lr}

    def tune_config(self, cfg: ExperimentConfig, max_concurrent: int, run_dir: str) -> tune.TuneConfig:
        return super().tune_config(cfg, 1, run_dir)
