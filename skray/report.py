"""What a finished (or interrupted) run leaves beside its trials, rebuilt from what is on disk.

Used at the end of every run and by `skray report`, so both always agree.
"""

from __future__ import annotations

import math

import pandas as pd

from skray.commands import COMMANDS
from skray.commands.compare import readable
from skray.results import best_trial, experiment, format_table, load_results, write_table

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
    "vs_best",
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
    by = "validation" + (" macro-F1" if table.attrs.get("selection", "").endswith("_f1") else "")
    if "completed" not in table.columns:
        return "\n".join([format_table(table), *verdict(table, "trial", f"best trial by {by}")])
    shown = readable(table)
    text = shown[[c for c in BRIEF if c in shown.columns]]
    text = text.assign(completed=shown["completed"].astype(str) + "/" + shown["seeds"].astype(str))
    text = text.to_string(index=False)
    for row in table.dropna(subset=["error"]).itertuples():
        text += f"\nfailed: {row.method}: {row.error}"
    lines = verdict(table, "method", f"best method by {by}")
    return "\n".join([text, *lines, *gap_lines(table)])


def gap_lines(table: pd.DataFrame) -> list[str]:
    """One line per other method: its test accuracy gap to the best, and whether it is beyond chance
    (``skray.commands.compare.paired_tests``)."""
    if "vs_best_gap" not in table.columns:
        return []
    best = best_trial(table)
    lines = []
    for row in table.to_dict("records"):
        if best is None or row["method"] == best["method"] or not row.get("vs_best"):
            continue
        if pd.isna(row["vs_best_gap"]):
            lines.append(f"{best['method']} vs {row['method']}: {row['vs_best']}")
            continue
        lines.append(
            f"{best['method']} vs {row['method']}: test accuracy {row['vs_best_gap']:+.3f} (95% CI "
            f"{row['vs_best_ci_low']:+.3f} to {row['vs_best_ci_high']:+.3f}, p {row['vs_best_p']:.2g}): "
            f"{row['vs_best']}"
        )
    return lines


def verdict(table: pd.DataFrame, key: str, which: str) -> list[str]:
    """One line on the table's best row: its test accuracy and macro-F1 against what it must beat on
    the same test rows (always answering the majority label, and the step-0 model), said plainly when
    it does not, or when its margin over the majority label is within the test set's sampling error.
    The best row is ``skray.results.best_trial``'s (completed, by the selection metric on validation).
    Nothing where no row completed (token classification: no majority line)."""
    if "test_acc" not in table.columns or "majority_test_acc" not in table.columns:
        return []
    best = best_trial(table)
    if best is None or pd.isna(best["test_acc"]) or pd.isna(best["majority_test_acc"]):
        return []
    acc, f1 = float(best["test_acc"]), float(best["test_f1"])
    majority, majority_f1 = float(best["majority_test_acc"]), _number(best.get("majority_test_f1"))
    zero, zero_f1 = _number(best.get("zero_shot_test_acc")), _number(best.get("zero_shot_test_f1"))
    line = f"{which} ({best[key]}): test accuracy {acc:.3f}, macro-F1 {f1:.3f}; "
    line += f"always answering the majority label: {majority:.3f}" + _f1(majority_f1)
    if not math.isnan(zero):
        line += f"; the untrained (step-0) model: {zero:.3f}" + _f1(zero_f1)
    if acc <= majority:
        return [f"{line}. It does NOT beat always answering the majority label."]
    if not math.isnan(zero) and acc <= zero:
        return [f"{line}. It does NOT beat the untrained model: training did not help on test."]
    rows = _number(best.get("test_rows"))
    noise = 2 * math.sqrt(majority * (1 - majority) / rows) if rows > 0 else float("nan")
    if acc - majority < noise:
        return [
            f"{line}. Its margin over the majority label ({acc - majority:.3f}) is within sampling error "
            f"(2 standard errors over {rows:.0f} test rows: {noise:.3f}): it does NOT clearly beat it."
        ]
    if not math.isnan(zero_f1) and f1 <= zero_f1:
        return [f"{line}. Its accuracy beats both, but its macro-F1 does NOT beat the untrained model's."]
    return [f"{line}. It beats both."]


def _number(value) -> float:
    """A table cell as a float, NaN where the column is missing or empty (tables of older runs)."""
    return float(value) if value is not None and pd.notna(value) else float("nan")


def _f1(value: float) -> str:
    return "" if math.isnan(value) else f" (macro-F1 {value:.3f})"
