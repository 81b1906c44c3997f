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
    "lr",
    "completed",
    "zero_shot_test_acc",
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
        return "\n".join([format_table(table), *verdict(table, "trial", "best trial by validation")])
    shown = readable(table)
    text = shown[BRIEF].assign(completed=shown["completed"].astype(str) + "/" + shown["seeds"].astype(str))
    text = text.to_string(index=False)
    for row in table.dropna(subset=["error"]).itertuples():
        text += f"\nfailed: {row.method}: {row.error}"
    return "\n".join([text, *verdict(table, "method", "best method by test accuracy")])


def verdict(table: pd.DataFrame, key: str, which: str) -> list[str]:
    """One line on the table's best row: its test accuracy against what it must beat on the same
    test rows (always answering the majority label, and the step-0 model), said plainly when it
    does not. Nothing where no row has a test score (token classification: no majority line)."""
    if "test_acc" not in table.columns or "majority_test_acc" not in table.columns:
        return []
    scored = table.dropna(subset=["test_acc"])
    if scored.empty or scored["majority_test_acc"].isna().all():
        return []
    best = scored.iloc[0]  # both tables come best first (validation for trials, mean test for methods)
    majority, zero = float(best["majority_test_acc"]), best.get("zero_shot_test_acc")
    line = f"{which} ({best[key]}): test accuracy {best['test_acc']:.3f}, macro-F1 {best['test_f1']:.3f}; "
    line += f"always answering the majority label: {majority:.3f}"
    if pd.notna(zero):
        line += f", the untrained (step-0) model: {float(zero):.3f}"
    if best["test_acc"] <= majority:
        return [f"{line}. It does NOT beat always answering the majority label."]
    if pd.notna(zero) and best["test_acc"] <= float(zero):
        return [f"{line}. It does NOT beat the untrained model: training did not help on test."]
    return [f"{line}. It beats both."]
