"""One reader for what runs leave on disk: run dir -> pandas table, plus CSV/Parquet export.

A trial directory holds Tune's ``params.json`` (what was tried) and ``result.json`` (one JSON
line per report, appended as it happens), so an interrupted run still yields every report
that was made. Lines that are cut off mid-write are skipped, never trusted.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

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


def _read_reports(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _status(reports: list[dict], trial_dir: Path, finished: bool) -> str:
    if (trial_dir / "error.txt").exists():
        return "error"
    if reports and reports[-1].get("done") and "test_accuracy" in reports[-1]:
        return "completed"
    return "early_stopped" if finished else "interrupted"


def load_results(run_dir: str | Path) -> pd.DataFrame:
    """One row per trial: what was tried, what it cost and how well it did."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SkrayError(f"{run_dir}: no such run directory")
    finished = (run_dir / "finished").exists()
    rows = []
    for params_file in sorted(run_dir.glob("*/params.json")):
        trial_dir = params_file.parent
        try:
            params = json.loads(params_file.read_text())
        except json.JSONDecodeError:
            continue
        reports = _read_reports(trial_dir / "result.json")
        last = reports[-1] if reports else {}
        row = {"trial": last.get("trial_id", trial_dir.name), **params, **{k: v for k, v in last.items() if k in COLUMNS}}
        row["status"] = _status(reports, trial_dir, finished)
        if trial_dir.joinpath("error.txt").exists():
            row["error"] = trial_dir.joinpath("error.txt").read_text().strip().splitlines()[-1][:200]
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


def _atomic_write(path: Path, write) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_table(table: pd.DataFrame, run_dir: str | Path) -> None:
    run_dir = Path(run_dir)
    _atomic_write(run_dir / "results.csv", lambda p: table.to_csv(p, index=False))
    _atomic_write(run_dir / "results.parquet", lambda p: table.to_parquet(p, index=False))


def format_table(table: pd.DataFrame) -> str:
    shown = table.drop(columns=[c for c in table.columns if c not in COLUMNS.values()])
    shown = shown.assign(wording=shown["wording"].astype(str).str.slice(0, 48))
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")
