"""`skray compare`: methods x seeds on one backbone, data, step budget and batch size.

Every (method, seed) is one Tune trial running its own Ray Train + DeepSpeed group, so a method
that fails is one failed row and the others still finish. The per-trial table is then folded
into the comparison: one row per method and seed, plus a mean ± sd row per method.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from ray import tune

from skray.commands.base import Command
from skray.config import ExperimentConfig, MethodConfig, compare_labels, entry_lr, method_variant
from skray.plots import plot_compare
from skray.results import write_table

SCORES = ["zero_shot_acc", "best_val_acc", "best_val_f1", "test_acc", "test_f1", "steps_to_target"]
COSTS = [
    "trainable_params",
    "trainable_pct",
    "train_s",
    "samples_per_s",
    "tokens_per_s",
    "peak_mem_mb",
    "checkpoint_bytes",
]


class Compare(Command):
    name = "compare"
    help = "SK-Tuning against PEFT baselines, full fine-tuning and a linear probe, over seeds"
    section = "compare"
    needs = "a compare section (methods, seeds)"
    files = "compare.md/.csv/.parquet, two PNG plots"

    def trials(self, cfg: ExperimentConfig) -> int:
        return len(cfg.compare.methods) * len(cfg.compare.seeds)

    def param_space(self, cfg: ExperimentConfig) -> dict[str, Any]:
        return {"method": tune.grid_search(list(variants(cfg))), "seed": tune.grid_search(cfg.compare.seeds)}

    def trial_config(self, cfg: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
        method, lr = variants(cfg)[params["method"]]
        train = cfg.train.model_copy(update={"seed": params["seed"], "lr": lr})
        return cfg.model_copy(update={"method": method, "train": train})

    def summarize(self, trials: pd.DataFrame, run_dir: str) -> pd.DataFrame:
        """compare.csv/.parquet/.md and two plots: accuracy against trainable parameters and time."""
        table = summary_table(trials)
        write_table(table, run_dir, "compare", markdown=True)
        plot_compare(trials, run_dir)
        return table


def variants(cfg: ExperimentConfig) -> dict[str, tuple[MethodConfig, float]]:
    """Method label -> the method section and learning rate that trial runs."""
    entries = cfg.compare.methods
    labels = compare_labels(entries, cfg.train.lr)
    return {
        name: (method_variant(cfg.method, e), entry_lr(e, cfg.train.lr))
        for name, e in zip(labels, entries, strict=True)
    }


def summary_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per method and seed, then per method "mean ± sd" over the seeds that completed."""
    t = trials.copy()
    if "error" not in t.columns:
        t["error"] = pd.NA
    t["trainable_pct"] = 100 * t["trainable_params"] / t["backbone_params"]
    per_seed = t[["method", "seed", "lr", *SCORES, *COSTS, "status", "error"]].sort_values(["method", "seed"])
    done = per_seed[per_seed["status"] == "completed"]
    order = pd.to_numeric(done["test_acc"], errors="coerce").groupby(done["method"]).mean().sort_values(ascending=False)
    methods = list(order.index) + [m for m in per_seed["method"].unique() if m not in order.index]
    rows = []
    for method in methods:
        group = per_seed[per_seed["method"] == method]
        done = group[group["status"] == "completed"]
        row: dict[str, Any] = {"method": method, "seed": "mean ± sd", "status": f"{len(done)}/{len(group)} completed"}
        for col in ["lr", *SCORES, *COSTS]:
            values = pd.to_numeric(done[col], errors="coerce").dropna()
            row[col] = _mean_sd(values, col)
            if col == "steps_to_target" and 0 < len(values) < len(done):
                row[col] += f" ({len(values)}/{len(done)} seeds)"  # the mean is over the seeds that got there
        rows.append(row)
    per_seed = per_seed.astype({"seed": str})
    return pd.concat([pd.DataFrame(rows), per_seed], ignore_index=True)


def _mean_sd(values: pd.Series, col: str) -> str:
    if values.empty:
        return ""
    fmt = "{:.0f}" if col in ("trainable_params", "checkpoint_bytes", "peak_mem_mb", "steps_to_target") else "{:.4g}"
    mean = fmt.format(values.mean())
    if len(values) < 2 or values.nunique() == 1:  # one seed, or the same on every seed (a count, a fixed lr)
        return mean
    return f"{mean} ± {fmt.format(values.std())}"
