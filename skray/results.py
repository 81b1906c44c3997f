"""One reader for what runs leave on disk: run dir -> pandas table, plus CSV/Parquet export.

A trial directory holds Tune's ``params.json`` (what was tried) and ``result.json`` (one JSON
line per report, appended as it happens), so an interrupted run still yields every report
that was made. Lines that are cut off mid-write are skipped, never trusted.
"""

from __future__ import annotations

import io
import json

import pandas as pd

from skray import storage
from skray.config import selection_metric
from skray.errors import SkrayError

# The table's columns, in order: the names the worker reports under (skray.train.recipe) and Tune's params.
COLUMNS = [
    "trial",
    "method",
    "seed",
    "wording",
    "prefix_length",
    "lr",
    "zero_shot_acc",
    "zero_shot_test_acc",
    "zero_shot_test_f1",
    "majority_test_acc",
    "majority_test_f1",
    "test_rows",
    "best_val_acc",
    "best_val_f1",
    "best_val_precision",
    "best_val_recall",
    "test_acc",
    "test_f1",
    "test_precision",
    "test_recall",
    "steps_to_target",
    "trainable_params",
    "backbone_params",
    "train_s",
    "samples_per_s",
    "tokens_per_s",
    "steady_samples_per_s",
    "steady_tokens_per_s",
    "time_to_first_step_s",
    "peak_mem_mb",
    "est_mem_mb",
    "param_bytes_per_worker",
    "peak_param_bytes_per_worker",
    "world_size",
    "zero_stage",
    "offload",
    "precision",
    "resumed_from",
    "checkpoint_bytes",
    "status",
]
SHOWN = [
    "trial",
    "method",
    "seed",
    "wording",
    "prefix_length",
    "lr",
    "zero_shot_acc",
    "best_val_acc",
    "best_val_f1",
    "zero_shot_test_acc",
    "majority_test_acc",
    "test_acc",
    "test_f1",
    "trainable_params",
    "train_s",
    "samples_per_s",
    "peak_mem_mb",
    "status",
    "error",
]


def _read_reports(path: str) -> list[dict]:
    rows = []
    if storage.exists(path):
        for line in storage.read_text(path).splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _status(reports: list[dict], trial_dir: str, finished: bool) -> str:
    if storage.exists(storage.join(trial_dir, "error.txt")):
        return "error"
    if reports and reports[-1].get("done") and "test_acc" in reports[-1]:
        return "completed"
    return "early_stopped" if finished else "interrupted"


def experiment(run_dir: str) -> dict:
    """What the run was started with: {"command": ..., "config": ...} (empty if not recorded)."""
    path = storage.join(str(run_dir), "experiment.json")
    return json.loads(storage.read_text(path)) if storage.exists(path) else {}


def _steps_to_target(reports: list[dict], target: float) -> float:
    return next((float(r["step"]) for r in reports if r.get("val_acc", -1.0) >= target), float("nan"))


def load_curves(run_dir: str, key: str = "acc") -> pd.DataFrame:
    """Every evaluation of every trial: trial, step and validation ``key`` (for learning curves)."""
    rows = []
    for trial_dir in storage.subdirs(str(run_dir)):
        for report in _read_reports(storage.join(trial_dir, "result.json")):
            if "trial_id" in report and f"val_{key}" in report:
                rows.append({"trial": report["trial_id"], "step": report["step"], f"val_{key}": report[f"val_{key}"]})
    return pd.DataFrame(rows, columns=["trial", "step", f"val_{key}"])


def load_results(run_dir: str) -> pd.DataFrame:
    """One row per trial: what was tried, what it cost and how well it did. Paths or URIs.

    ``steps_to_target`` is the first evaluated step at which validation accuracy reached
    ``compare.target_accuracy`` (compare runs; NaN if it never did).
    """
    run_dir = str(run_dir)
    if not storage.is_dir(run_dir):
        raise SkrayError(f"{run_dir}: no such run directory")
    finished = storage.exists(storage.join(run_dir, "finished"))
    config = experiment(run_dir).get("config") or {}
    compare = config.get("compare")
    rows = []
    for trial_dir in storage.subdirs(run_dir):
        try:
            params = json.loads(storage.read_text(storage.join(trial_dir, "params.json")))
        except (FileNotFoundError, json.JSONDecodeError):
            continue  # not a trial directory (e.g. Ray Train's checkpoints), or a half-written one
        reports = _read_reports(storage.join(trial_dir, "result.json"))
        last = reports[-1] if reports else {}
        name = trial_dir.rsplit("/", 1)[-1]  # Tune names it run_trial_<id>_<n>_<params>_<time>
        row = {
            "trial": last.get("trial_id", name.split("_")[2] if name.startswith("run_trial_") else name),
            **params,
            **{k: v for k, v in last.items() if k in COLUMNS},
        }
        if compare:
            row["steps_to_target"] = _steps_to_target(reports, compare["target_accuracy"])
        row["status"] = _status(reports, trial_dir, finished)
        if row["status"] == "error":
            row["error"] = storage.read_text(storage.join(trial_dir, "error.txt")).strip().splitlines()[-1][:200]
        rows.append(row)
    if not rows:
        raise SkrayError(f"{run_dir}: no trials found (is this a skray run directory?)")
    table = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in table.columns:
            table[col] = pd.NA
    extra = [c for c in table.columns if c not in COLUMNS]
    table = table[COLUMNS + extra]
    key = f"best_val_{selection_metric((config.get('data') or {}).get('task', 'classification'))}"
    return table.sort_values(key, ascending=False, na_position="last").reset_index(drop=True)


def write_table(table: pd.DataFrame, run_dir: str, stem: str = "results", markdown: bool = False) -> None:
    """``stem``.csv and .parquet (and .md) beside the trials, each written whole so no reader sees
    half a file. Mixed-type columns (numbers beside "mean ± sd", dicts) are stored as text."""
    run_dir = str(run_dir)
    storage.write_text(storage.join(run_dir, f"{stem}.csv"), table.to_csv(index=False))
    text = {c: table[c].where(table[c].isna(), table[c].astype(str)) for c in table.columns if table[c].dtype == object}
    buf = io.BytesIO()
    table.assign(**text).to_parquet(buf, index=False)
    storage.write_bytes(storage.join(run_dir, f"{stem}.parquet"), buf.getvalue())
    if markdown:  # for reading: 4 significant digits, blanks for missing values
        shown = table.map(
            lambda v: "" if v is None or v is pd.NA or v != v else f"{v:.4g}" if isinstance(v, float) else v
        )
        storage.write_text(storage.join(run_dir, f"{stem}.md"), shown.to_markdown(index=False) + "\n")


def format_table(table: pd.DataFrame) -> str:
    shown = table[[c for c in SHOWN if c in table.columns and table[c].notna().any()]]
    if "wording" in shown.columns:  # a search of a kind that reads no wording has none
        shown = shown.assign(wording=shown["wording"].astype(str).str.slice(0, 48))
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")
