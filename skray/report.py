"""What a finished (or interrupted) run leaves beside its trials, rebuilt from what is on disk.

Used at the end of every run and by `skray report`, so both always agree.
"""

from __future__ import annotations

import pandas as pd

from skray.commands import COMMANDS
from skray.commands.compare import readable
from skray.results import experiment, format_table, load_results, write_table

BRIEF = [
    "method",
    "completed",
    "zero_shot_acc",
    "test_acc",
    "test_f1",
    "steps_to_target",
    "trainable_params",
    "trainable_pct",
    "train_s",
    "tokens_per_s",
    "peak_mem_mb",
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
    """Text for the terminal: the scaling grid, a comparison's per-method means (± sd over seeds,
    each failed seed's error below), or the trials."""
    if "scaling_efficiency" in table.columns:
        return table.drop(columns="point").to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="")
    if "completed" not in table.columns:
        return format_table(table)
    shown = readable(table)
    text = shown[BRIEF].assign(completed=shown["completed"].astype(str) + "/" + shown["seeds"].astype(str))
    text = text.to_string(index=False)
    for row in table.dropna(subset=["error"]).itertuples():
        text += f"\nfailed: {row.method}: {row.error}"
    return text
