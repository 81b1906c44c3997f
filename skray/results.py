"""One reader for what runs leave on disk: run dir -> pandas table, plus CSV/Parquet export.

A trial directory holds Tune's ``params.json`` (what was tried) and ``result.json`` (one JSON
line per report, appended as it happens), so an interrupted run still yields every report
that was made. Lines that are cut off mid-write are skipped, never trusted.
"""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
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
    "best_step",
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
        for report in storage.read_reports(storage.join(trial_dir, "result.json")):
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
        if is_slot(params):
            continue
        params.pop("member", None)  # a solo member's id (skray.broker.Lanes): the trial column says it
        reports = storage.read_reports(storage.join(trial_dir, "result.json"))
        last = reports[-1] if reports else {}
        name = trial_dir.rsplit("/", 1)[-1]
        row = {
            "trial": last.get("trial_id", trial_of(name)),
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
    key = selection_key(config)
    table = table.sort_values(key, ascending=False, na_position="last").reset_index(drop=True)
    table.attrs["selection"] = key
    return table


def is_slot(params: dict) -> bool:
    """A packed run's slot (``skray.broker``): a Tune trial whose members, not itself, are the trials."""
    return "slot" in params and "method" not in params


def selection_key(config: dict) -> str:
    """The column that ranks trials, ``best_val_acc`` or ``best_val_f1``: ``train.select_by`` for the
    data's task (``skray.config.selection_metric``), from a run's config as experiment.json holds it."""
    task = (config.get("data") or {}).get("task", "classification")
    return f"best_val_{selection_metric(task, (config.get('train') or {}).get('select_by', 'accuracy'))}"


def completed(table: pd.DataFrame) -> pd.Series:
    """Which rows completed: tested trials (status completed), or in a per-method table (compare's
    summary) the methods with a completed seed."""
    if "status" in table.columns:
        return table["status"] == "completed"
    return pd.to_numeric(table["completed"], errors="coerce").fillna(0) > 0


def ranked(table: pd.DataFrame, key: str | None = None) -> pd.DataFrame:
    """The rows best first by the one definition of best: completed rows before the rest, then the
    selection metric on validation (``key``; default the table's own, as ``load_results`` set it).
    Test scores never rank: they are read once, of the row this picks."""
    key = key or table.attrs.get("selection", "best_val_acc")
    order = pd.DataFrame({"done": completed(table), "score": pd.to_numeric(table[key], errors="coerce")})
    index = order.sort_values(["done", "score"], ascending=False, na_position="last", kind="stable").index
    out = table.loc[index].reset_index(drop=True)
    out.attrs["selection"] = key
    return out


def best_trial(table: pd.DataFrame, key: str | None = None) -> pd.Series | None:
    """The best trial (or method, in a per-method table): the completed row with the highest selection
    metric on validation; None where none completed. The closing line, ``skray predict``, ``skray
    export`` and compare's summary all take this one."""
    top = ranked(table, key)
    return top.iloc[0] if len(top) and bool(completed(top).iloc[0]) else None


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


# Tune's trial ids: a searcher's are hex (``f9172397``); its basic variant generator's, which runs
# grids and a compare's seeds, are five hex digits, "_" and a five-digit count (``ea424_00000``).
_TUNE_TRIAL = re.compile(r"run_trial_([0-9a-f]{5}_\d{5}|[0-9a-f]+)_\d+(_|$)")


def trial_of(name: str) -> str:
    """The trial a folder of a run holds: Tune names a trial's run_trial_<id>_<n>_<params>_<time>; a
    packed member's is train_m<token><n> (``skray.broker``; Ray Train's own train_<id> is hex); else the name."""
    if name.startswith("run_trial_"):
        tune_trial = _TUNE_TRIAL.match(name)
        return tune_trial.group(1) if tune_trial else name.split("_")[2]
    return name.removeprefix("train_") if name.startswith("train_m") else name


def trial_predictions(run_dir: str, trial: str) -> pd.DataFrame | None:
    """A completed trial's final test predictions (row, gold, pred; ``skray.train.evaluate.save_predictions``):
    beside its reports (a compare's tuned seed carries them there), else in its newest checkpoint that
    has them (Ray Train's ``train_<trial>/checkpoint_*``, or the trial's own). None where there are none
    (an older run, token classification)."""
    from skray.train.evaluate import PREDICTIONS

    run_dir = str(run_dir)
    subdirs = storage.subdirs(run_dir)
    own = [d for d in subdirs if trial_of(d.rsplit("/", 1)[-1].removeprefix("tuned_")) == trial]
    places = list(own)
    for d in [*own, *(d for d in subdirs if d.rsplit("/", 1)[-1] == f"train_{trial}")]:
        places += sorted(
            (c for c in storage.subdirs(d) if c.rsplit("/", 1)[-1].startswith("checkpoint_")), reverse=True
        )
    for place in places:
        path = storage.join(place, PREDICTIONS)
        if storage.exists(path):
            return pd.read_csv(io.StringIO(storage.read_text(path)))
    return None


def write_predictions(directory: str, predictions: pd.DataFrame) -> None:
    """Per-row test predictions (as ``trial_predictions`` reads them) into ``directory``."""
    from skray.train.evaluate import PREDICTIONS

    storage.write_text(storage.join(str(directory), PREDICTIONS), predictions.to_csv(index=False))


RESAMPLES = 4000  # bootstrap resamples and sign flips: a 95% interval's ends move by well under 0.01 between seeds


def mcnemar_p(best_right: np.ndarray, other_right: np.ndarray) -> float:
    """Exact two-sided McNemar test on paired right/wrong answers: of the rows exactly one of the two
    got right, is the split between them further from even than chance would make it (binomial, p 1/2)?"""
    b = int(np.sum(best_right & ~other_right))
    c = int(np.sum(~best_right & other_right))
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def _resampled_means(diff: np.ndarray, rng: np.random.Generator, flip: bool) -> np.ndarray:
    """RESAMPLES means of ``diff``: over rows drawn with replacement (bootstrap), or with random signs
    (the sign-flip test's null distribution), in chunks so memory stays small."""
    n, means = len(diff), []
    for start in range(0, RESAMPLES, 256):
        size = min(256, RESAMPLES - start)
        if flip:
            means.append((rng.choice(np.array([-1.0, 1.0]), size=(size, n)) * diff).mean(1))
        else:
            means.append(diff[rng.integers(0, n, size=(size, n))].mean(1))
    return np.concatenate(means)


def paired_gap(best: np.ndarray, other: np.ndarray, seed: int = 0) -> dict[str, float]:
    """The accuracy gap between two methods over the same test rows, and whether it is beyond chance.

    ``best`` and ``other``: (seeds, rows) right (True) or wrong, each method's own completed seeds (one
    row each; the seeds need not be the same ones). Per row, each method's share of seeds that got it
    right; the gap is the mean over rows of the difference (= the difference of the mean accuracies
    over seeds). The 95% interval is a paired bootstrap over rows, drawn jointly for every seed (the
    seeds read the same rows, so a row's difficulty counts once); p is a two-sided sign-flip test on
    the per-row differences (for one seed each, the McNemar test in all but name). Seeds are taken as
    they are, not resampled: the interval is for these trained models on a resampled test set."""
    diff = best.astype(float).mean(0) - other.astype(float).mean(0)
    rng = np.random.default_rng(seed)
    boot = _resampled_means(diff, rng, flip=False)
    flipped = _resampled_means(diff, rng, flip=True)
    gap = float(diff.mean())
    low, high = np.percentile(boot, [2.5, 97.5])
    p = (1 + int(np.sum(np.abs(flipped) >= abs(gap) - 1e-12))) / (RESAMPLES + 1)
    return {"gap": gap, "ci_low": float(low), "ci_high": float(high), "p": float(p)}


def gap_verdict(gap: dict[str, float]) -> str:
    """``beyond chance`` when the 95% interval excludes 0 (the other method better, where the gap is
    negative) and the sign-flip test agrees (p < 0.05), else ``within chance``: on a few rows the
    bootstrap's percentile interval is too narrow (16 rows: an interval clear of 0 at p 0.07), and a
    verdict must not rest on it alone."""
    if gap["p"] >= 0.05:
        return "within chance"
    if gap["ci_low"] > 0:
        return "beyond chance"
    if gap["ci_high"] < 0:
        return "beyond chance (the other is better on test)"
    return "within chance"
