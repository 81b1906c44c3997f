"""`skray scale`: throughput and memory over workers x ZeRO stage x offload x micro batch.

Every grid point is one Tune trial running its own short Ray Train + DeepSpeed group, one at a
time so points do not share CPUs; a point that fails (out of memory, say) is a failed row and the
grid goes on. Throughput is the steady state: the first ``train.untimed_steps`` steps are left out.
"""

from __future__ import annotations

import itertools
from typing import Any

import pandas as pd
from ray import tune

from skray.commands.base import Command
from skray.config import ExperimentConfig, TrainConfig
from skray.errors import ConfigError
from skray.plots import plot_scale
from skray.results import write_table

COLUMNS = [
    "point",
    "workers",
    "zero_stage",
    "offload",
    "micro_batch",
    "steady_samples_per_s",
    "steady_tokens_per_s",
    "scaling_efficiency",
    "peak_mem_mb",
    "est_mem_mb",
    "param_mb_per_worker",
    "first_step_s",
    "status",
    "error",
]


class Scale(Command):
    name = "scale"
    help = "throughput and memory over workers x ZeRO stage x offload x micro batch"
    section = "scale"
    needs = "a scale section (num_workers, zero_stages, offloads, micro_batch_sizes)"
    files = "scale.md/.csv/.parquet, scaling.png"
    sequential = True

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        if not points(cfg):
            raise ConfigError(
                "scale: no valid point (offload 'optimizer' needs a ZeRO stage 1-3, 'params' and 'all' need stage 3)"
            )

    def workers(self, cfg: ExperimentConfig) -> tuple[int, str]:
        return max(cfg.scale.num_workers), "scale.num_workers"

    def trials(self, cfg: ExperimentConfig) -> int:
        return len(points(cfg))

    def param_space(self, cfg: ExperimentConfig) -> dict[str, Any]:
        return {"point": tune.grid_search(points(cfg))}

    def trial_config(self, cfg: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
        return cfg.model_copy(update={"train": cfg.train.model_copy(update=params["point"])})

    def summarize(self, trials: pd.DataFrame, run_dir: str) -> pd.DataFrame:
        """scale.csv/.parquet/.md and scaling.png."""
        table = summary_table(trials)
        write_table(table, run_dir, "scale", markdown=True)
        plot_scale(table, run_dir)
        return table


def label(point: dict) -> str:
    return f"w{point['num_workers']}-z{point['zero_stage']}-{point['offload']}-mb{point['micro_batch_size']}"


def points(cfg: ExperimentConfig) -> list[dict]:
    """Every valid grid point (offload 'optimizer' needs stage 1-3, 'params' and 'all' need stage 3)."""
    s = cfg.scale
    grid = []
    for workers, stage, offload, micro in itertools.product(
        s.num_workers, s.zero_stages, s.offloads, s.micro_batch_sizes
    ):
        point = {"num_workers": workers, "zero_stage": stage, "offload": offload, "micro_batch_size": micro}
        try:
            TrainConfig.model_validate({**cfg.train.model_dump(), **point})
        except ValueError:
            continue
        grid.append(point)
    return grid


def summary_table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per point; scaling efficiency = samples/s at n workers / (n x samples/s at 1 worker)
    with the same stage, offload and micro batch."""
    t = trials.copy()
    for col in (
        "error",
        "steady_samples_per_s",
        "steady_tokens_per_s",
        "est_mem_mb",
        "param_bytes_per_worker",
        "time_to_first_step_s",
    ):
        if col not in t.columns:
            t[col] = pd.NA
    grid = pd.DataFrame(list(t["point"]), index=t.index)
    table = pd.DataFrame(
        {
            "point": t["point"].apply(label),
            "workers": grid["num_workers"],
            "zero_stage": grid["zero_stage"],
            "offload": grid["offload"],
            "micro_batch": grid["micro_batch_size"],
            "steady_samples_per_s": pd.to_numeric(t["steady_samples_per_s"], errors="coerce"),
            "steady_tokens_per_s": pd.to_numeric(t["steady_tokens_per_s"], errors="coerce"),
            "peak_mem_mb": pd.to_numeric(t["peak_mem_mb"], errors="coerce"),
            "est_mem_mb": pd.to_numeric(t["est_mem_mb"], errors="coerce"),
            "param_mb_per_worker": pd.to_numeric(t["param_bytes_per_worker"], errors="coerce") / 2**20,
            "first_step_s": pd.to_numeric(t["time_to_first_step_s"], errors="coerce"),
            "status": t["status"],
            "error": t["error"],
        }
    )
    same = ["zero_stage", "offload", "micro_batch"]
    single = table[table["workers"] == 1].set_index(same)["steady_samples_per_s"]
    base = table.set_index(same).index.map(lambda k: single.get(k, float("nan")))
    table["scaling_efficiency"] = table["steady_samples_per_s"] / (
        table["workers"] * pd.Series(base, index=table.index, dtype=float)
    )
    return table[COLUMNS].sort_values(["micro_batch", "offload", "zero_stage", "workers"]).reset_index(drop=True)
