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
from skray.errors import SkrayError

COLUMNS = {
    "trial": "trial",
    "method": "method",
    "wording": "wording",
    "prefix_length": "prefix_length",
    "lr": "lr",
    "zero_shot_accuracy": "zero_shot_acc",
    "best_val_accuracy": "best_val_acc",
    "test_accuracy": "test_acc",
    "trainable_params": "trainable_params",
    "train_seconds": "train_s",
    "samples_per_sec": "samples_per_s",
    "peak_memory_mb": "peak_mem_mb",
    "status": "status",
}


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
    if reports and reports[-1].get("done") and "test_accuracy" in reports[-1]:
        return "completed"
    return "early_stopped" if finished else "interrupted"


def load_results(run_dir: str) -> pd.DataFrame:
    """One row per trial: what was tried, what it cost and how well it did. Paths or URIs."""
    run_dir = str(run_dir)
    if not storage.is_dir(run_dir):
        raise SkrayError(f"{run_dir}: no such run directory")
    finished = storage.exists(storage.join(run_dir, "finished"))
    rows = []
    for trial_dir in storage.subdirs(run_dir):
        try:
            params = json.loads(storage.read_text(storage.join(trial_dir, "params.json")))
        except (FileNotFoundError, json.JSONDecodeError):
            continue  # not a trial directory (e.g. Ray Train's checkpoints), or a half-written one
        reports = _read_reports(storage.join(trial_dir, "result.json"))
        last = reports[-1] if reports else {}
        name = trial_dir.rsplit("/", 1)[-1]  # Tune names it run_trial_<id>_<n>_<params>_<time>
        row = {"trial": last.get("trial_id", name.split("_")[2] if name.startswith("run_trial_") else name), **params, **{k: v for k, v in last.items() if k in COLUMNS}}
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
    table = table[list(COLUMNS) + extra].rename(columns=COLUMNS)
    return table.sort_values("best_val_acc", ascending=False, na_position="last").reset_index(drop=True)


def write_table(table: pd.DataFrame, run_dir: str) -> None:
    """CSV and Parquet beside the trials, each written whole so no reader sees half a file."""
    run_dir = str(run_dir)
    storage.write_text(storage.join(run_dir, "results.csv"), table.to_csv(index=False))
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    storage.write_bytes(storage.join(run_dir, "results.parquet"), buf.getvalue())


def format_table(table: pd.DataFrame) -> str:
    shown = table.drop(columns=[c for c in table.columns if c not in [*COLUMNS.values(), "error"]])
    shown = shown.assign(wording=shown["wording"].astype(str).str.slice(0, 48))
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")
