"""What a finished (or interrupted) run leaves beside its trials, rebuilt from what is on disk.

Used at the end of every run and by `skray report`, so both always agree.
"""

from __future__ import annotations

import pandas as pd

from skray.commands import COMMANDS
from skray.results import experiment, format_table, load_results, write_table

BRIEF = [
    "method",
    "seed",
    "zero_shot_acc",
    "test_acc",
    "test_f1",
    "steps_to_target",
    "trainable_params",
    "trainable_pct",
    "train_s",
    "tokens_per_s",
    "peak_mem_mb",
    "status",
]


def rebuild(run_dir: str) -> pd.DataFrame:
    """results.csv/.parquet for every run; for a compare run also compare.csv/.parquet/.md and
    two PNG plots, for a scale run scale.csv/.parquet/.md and scaling.png. Returns the table to
    show: the comparison, the scaling grid, or the trials."""
    trials = load_results(run_dir)
    write_table(trials, run_dir)
    command = COMMANDS.get(experiment(run_dir).get("command"))
    return command.summarize(trials, str(run_dir)) if command else trials


def show(table: pd.DataFrame) -> str:
    """Text for the terminal: a comparison's per-method rows (files hold every seed), or the trials."""
    if "scaling_efficiency" in table.columns:
        return table.drop(columns="point").to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="")
    if "trainable_pct" not in table.columns:
        return format_table(table)
    means = table[table["seed"] == "mean ± sd"]
    failed = table[table["status"] == "error"]
    text = means[[c for c in BRIEF if c in means.columns]].to_string(index=False)
    for _, row in failed.iterrows():
        text += f"\nfailed: {row['method']} seed {row['seed']}: {row['error']}"
    return text
