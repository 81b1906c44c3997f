"""`skray compare`: methods x seeds on one backbone, data, step budget and batch size.

Every (method, seed) is one Tune trial running its own Ray Train + DeepSpeed group, so a method
that fails is one failed row and the others still finish. The per-trial table is then folded
into the comparison: one row per method and seed, plus a mean ± sd row per method.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from skray.config import ExperimentConfig, MethodConfig, compare_labels, entry_lr, method_variant

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


def variants(cfg: ExperimentConfig) -> dict[str, tuple[MethodConfig, float]]:
    """Method label -> the method section and learning rate that trial runs."""
    entries = cfg.compare.methods
    labels = compare_labels(entries, cfg.train.lr)
    return {
        name: (method_variant(cfg.method, e), entry_lr(e, cfg.train.lr))
        for name, e in zip(labels, entries, strict=True)
    }


def summarize(trials: pd.DataFrame) -> pd.DataFrame:
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
