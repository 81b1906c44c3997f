"""`skray compare`: methods x seeds on one backbone, data, step budget and batch size.

Every (method, seed) is one Tune trial running its own Ray Train + DeepSpeed group, so a method
that fails is one failed row and the others still finish. results.csv holds those rows (one per
method and seed); compare.csv folds them into one row per method: each score and cost as the mean
over the seeds that completed, its sd in a ``<column>_sd`` column beside it, numbers throughout.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
from ray import tune

from skray import storage
from skray.commands.base import Command, SubSearch
from skray.commands.tune import SEARCHED_HEADS, head_searchable
from skray.config import (
    LR_RANGES,
    ExperimentConfig,
    IntRange,
    LogRange,
    MethodConfig,
    SearchConfig,
    compare_labels,
    entry_lr,
    method_run_name,
    method_variant,
)
from skray.errors import Interrupted
from skray.plots import plot_compare
from skray.results import (
    best_trial,
    experiment,
    gap_verdict,
    mcnemar_p,
    paired_gap,
    ranked,
    selection_key,
    trial_of,
    trial_predictions,
    write_predictions,
    write_table,
)

SCORES = [
    "zero_shot_acc",
    "zero_shot_test_acc",
    "zero_shot_test_f1",
    "majority_test_acc",
    "majority_test_f1",
    "best_val_acc",
    "best_val_f1",
    "test_acc",
    "test_f1",
    "steps_to_target",
]
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

    def packing(self, cfg: ExperimentConfig) -> tuple[str | int, list[str]]:
        return cfg.compare.pack, [method.kind for method, _ in variants(cfg).values()]

    def points(self, cfg: ExperimentConfig) -> list[dict[str, Any]]:
        return [{"method": label, "seed": seed} for label in variants(cfg) for seed in cfg.compare.seeds]

    def prepare(self, cfg: ExperimentConfig, run_dir: str, cpus: float, search: SubSearch) -> ExperimentConfig:
        """With compare.tune: every method's own Optuna search first (RUN_DIR/tuning/), the same
        budget for each; the seeds then run each method's best setting. That setting has already
        run at the first seed (the search's best trial): it is taken into the run as that seed's
        row, and the trials run the other seeds."""
        if cfg.compare.tune is None:
            return cfg
        labels = compare_labels(cfg.compare.methods, cfg.train.lr)
        tuned = [
            tuned_entry(cfg, label, entry, run_dir, search)
            for label, entry in zip(labels, cfg.compare.methods, strict=True)
        ]
        entries = [entry for entry, _ in tuned]
        seeds = cfg.compare.seeds
        if len(seeds) > 1:  # with one seed, the seed runs would all be copies
            chosen = compare_labels(entries, cfg.train.lr)
            for label, (_, best_dir) in zip(chosen, tuned, strict=True):
                take_trial(best_dir, run_dir, {"method": label, "seed": seeds[0]})
            seeds = seeds[1:]
        # What the trials run: each method at its chosen setting, as an untuned compare would (the
        # run's experiment.json keeps compare.tune and every seed, which the table and plots read)
        update = {"methods": entries, "tune": None, "seeds": seeds}
        return cfg.model_copy(update={"compare": cfg.compare.model_copy(update=update)})

    def trial_config(self, cfg: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
        method, lr = variants(cfg)[params["method"]]
        train = cfg.train.model_copy(update={"seed": params["seed"], "lr": lr})
        return cfg.model_copy(update={"method": method, "train": train})

    def summarize(self, trials: pd.DataFrame, run_dir: str) -> pd.DataFrame:
        """compare.csv/.parquet (numbers), compare.md ("mean ± sd", for reading) and two plots:
        accuracy against trainable parameters and against time."""
        started = experiment(run_dir).get("config") or {}
        table = paired_tests(summary_table(trials, selection_key(started)), trials, run_dir)
        tuned = (started.get("compare") or {}).get("tune")
        title = ""
        if tuned:  # every method at its own best setting after the same search budget
            table.insert(2, "tune_trials", tuned["trials"])
            table.insert(2, "lr_searched", searched_ranges(table, started, run_dir))
            title = f"each method tuned first: {tuned['trials']} Optuna trials (lr; m where it has one)"
        write_table(table, run_dir, "compare")
        storage.write_text(storage.join(run_dir, "compare.md"), readable(table).to_markdown(index=False) + "\n")
        plot_compare(trials, run_dir, title)
        return table


def searched_ranges(table: pd.DataFrame, started: dict[str, Any], run_dir: str) -> list[str | None]:
    """Each method's searched learning rates, "low-high" (from the config the run started with and the
    one its searches prepared, prepared.json), and where the lr its search chose lies at an end of that
    range (``skray.searcher.edge``), ", chosen at the top" (or bottom): the range may have capped it."""
    from skray.searcher import edge

    prepared = storage.join(run_dir, "prepared.json")
    if not storage.exists(prepared):
        return [None] * len(table)
    cfg = ExperimentConfig.model_validate(started)
    ran = ExperimentConfig.model_validate(json.loads(storage.read_text(prepared)))
    labels = compare_labels(ran.compare.methods, ran.train.lr)
    ranges = dict(zip(labels, [lr_range(cfg, entry) for entry in cfg.compare.methods], strict=True))
    out: list[str | None] = []
    for method, lr in zip(table["method"], table["lr"], strict=True):
        r = ranges.get(method)
        end = r and edge(lr, r.low, r.high, log=True)
        out.append(r and f"{r.low:.2g}-{r.high:.2g}" + (f", chosen at the {end}" if end else ""))
    return out


def method_search(cfg: ExperimentConfig, label: str, entry: str | dict[str, Any], run_dir: str) -> ExperimentConfig:
    """The ``skray tune`` run that searches one method for compare.tune: ``compare.tune.trials``
    trials over its learning rate (``lr_range``), m where it has virtual positions, and the head where
    neither the method section nor the entry names one (as ``skray tune`` does), at the first seed,
    the start-up spread over the ranges, ASHA's first rung at the evaluation nearest half the steps,
    stored in RUN_DIR/tuning/."""
    t = cfg.compare.tune
    method = method_variant(cfg.method, entry)
    m = IntRange(low=method.prefix_length, high=method.prefix_length)
    fixed_m = method.kind in ("sk_prefix", "sk_prompt") and method.adapter != "mixer"  # m = k: not searched
    searched = m if fixed_m else t.prefix_length or m
    sub = cfg.model_copy(
        update={
            "name": method_run_name(cfg.name, label),
            "storage_path": storage.join(run_dir, "tuning"),
            "method": method,
            "train": cfg.train.model_copy(update={"seed": cfg.compare.seeds[0]}),
            "search": SearchConfig(
                num_trials=t.trials,
                wordings=[method.wording],
                prefix_length=searched,
                lr=lr_range(cfg, entry),
                startup_points="spread",
                grace_period=max(1, cfg.train.max_steps // 2 // cfg.train.eval_every),  # ASHA at half the steps
            ),
            "compare": None,
        }
    )
    named = "head" in cfg.method.model_fields_set or (isinstance(entry, dict) and "head" in entry)
    if named or not head_searchable(sub):
        return sub
    return sub.model_copy(update={"search": sub.search.model_copy(update={"heads": list(SEARCHED_HEADS)})})


def lr_range(cfg: ExperimentConfig, entry: str | dict[str, Any]) -> LogRange:
    """The learning rates one method's search covers: the entry's own ``lr: {low, high}``, else
    ``compare.tune.lr``, else its kind's range in ``LR_RANGES``."""
    own = entry.get("lr") if isinstance(entry, dict) else None
    if own is not None:
        return LogRange.model_validate(own)
    if cfg.compare.tune.lr is not None:
        return cfg.compare.tune.lr
    low, high = LR_RANGES[method_variant(cfg.method, entry).kind]
    return LogRange(low=low, high=high)


def tuned_entry(
    cfg: ExperimentConfig, label: str, entry: str | dict[str, Any], run_dir: str, search: SubSearch
) -> tuple[dict[str, Any], str]:
    """One method's search (``method_search``), run by ``search`` (in a resumed compare, one that had
    finished is read back); returns the entry with the best completed trial's setting (by
    validation), and that trial's directory."""
    from skray.searcher import Space

    sub = method_search(cfg, label, entry, run_dir)
    searched = sub.search.prefix_length
    tuned_dir, table = search(sub)
    if not storage.exists(storage.join(tuned_dir, "finished")):  # Tune returns on Ctrl-C; so must compare
        raise Interrupted(
            f"interrupted while compare.tune searched {label}; the searches so far are kept in "
            f"{run_dir}: run the same command again to go on"
        )
    key = selection_key(sub.model_dump())
    best = best_trial(table, key)
    if best is None:  # none completed: the search's best by validation still says where the method trains
        best = ranked(table, key).iloc[0]
    chosen = {"kind": entry} if isinstance(entry, str) else dict(entry)
    chosen["lr"] = float(best["lr"])
    if searched.low < searched.high and pd.notna(best.get("prefix_length")):
        chosen["prefix_length"] = int(best["prefix_length"])
    if sub.search.heads and pd.notna(best.get("head")):
        chosen["head"] = str(best["head"])
    ends = {name: f", at the {end} of its range" for name, end, _ in Space.from_config(sub).at_edges(chosen)}
    print(
        f"skray: compare.tune: {label}: best of {len(table)} trials (validation {key[9:]} {best[key]:.3f}): "
        f"lr {chosen['lr']:.3g} (searched {sub.search.lr.low:g}-{sub.search.lr.high:g}{ends.get('lr', '')})"
        + (f", m {chosen['prefix_length']}{ends.get('prefix_length', '')}" if "prefix_length" in chosen else "")
        + (f", head {chosen['head']}" if "head" in chosen else "")
        + f"; {tuned_dir}/",
        flush=True,
    )
    (best_dir,) = [
        d
        for d in storage.subdirs(tuned_dir)
        if trial_of(d.rsplit("/", 1)[-1]) == best["trial"] and storage.exists(storage.join(d, "params.json"))
    ]
    return chosen, best_dir


def take_trial(trial_dir: str, run_dir: str, params: dict[str, Any]) -> None:
    """A search trial as a trial of the compare run: its reports (and error, if it failed) under
    the compare's ``params``, in RUN_DIR/tuned_<its directory name>, where the results table reads
    trials, with its test predictions; its checkpoints stay in the search's directory."""
    search_dir, name = trial_dir.rsplit("/", 1)
    into = storage.join(run_dir, "tuned_" + name)
    for file in ("result.json", "error.txt"):
        if storage.exists(storage.join(trial_dir, file)):
            storage.write_text(storage.join(into, file), storage.read_text(storage.join(trial_dir, file)))
    storage.write_text(storage.join(into, "params.json"), json.dumps(params, indent=2))
    predictions = trial_predictions(search_dir, trial_of(name))  # its test rows, for the paired tests
    if predictions is not None:
        write_predictions(into, predictions)


def variants(cfg: ExperimentConfig) -> dict[str, tuple[MethodConfig, float]]:
    """Method label -> the method section and learning rate that trial runs."""
    entries = cfg.compare.methods
    labels = compare_labels(entries, cfg.train.lr)
    return {
        name: (method_variant(cfg.method, e), entry_lr(e, cfg.train.lr))
        for name, e in zip(labels, entries, strict=True)
    }


def summary_table(trials: pd.DataFrame, key: str = "best_val_acc") -> pd.DataFrame:
    """One row per method, best first as ``skray.results.ranked`` ranks (methods with a completed seed
    first, then the mean over those seeds of the selection metric on validation, ``key``; never by
    test): seeds run and completed, then per score and cost the mean over completed seeds and
    ``<column>_sd``; ``reached_target`` counts the seeds whose validation accuracy reached the target
    (``steps_to_target`` is their mean); ``error`` names each failed seed's error."""
    t = trials.copy()
    if "error" not in t.columns:
        t["error"] = pd.NA
    t["trainable_pct"] = 100 * t["trainable_params"] / t["backbone_params"]
    rows = []
    for method, group in t.groupby("method", sort=False):
        done = group[group["status"] == "completed"]
        row: dict[str, Any] = {
            "method": method,
            "lr": group["lr"].iloc[0],
            "seeds": len(group),
            "completed": len(done),
            "test_rows": pd.to_numeric(group.get("test_rows"), errors="coerce").max(),  # the same rows every seed
        }
        for col in [*SCORES, *COSTS]:
            values = pd.to_numeric(done[col], errors="coerce").dropna()
            row[col] = values.mean() if len(values) else float("nan")
            row[f"{col}_sd"] = values.std() if len(values) > 1 else float("nan")
        row["reached_target"] = int(pd.to_numeric(done["steps_to_target"], errors="coerce").notna().sum())
        failed = group[group["status"] == "error"]
        row["error"] = "; ".join(f"seed {r.seed}: {r.error}" for r in failed.itertuples()) or pd.NA
        rows.append(row)
    return ranked(pd.DataFrame(rows), key)


VS_BEST = ["vs_best_gap", "vs_best_ci_low", "vs_best_ci_high", "vs_best_p", "vs_best_per_seed", "vs_best"]


def _right(trials: pd.DataFrame, run_dir: str) -> dict[str, dict[Any, pd.DataFrame]]:
    """Method -> seed -> that completed trial's test predictions (row, gold, pred), by row."""
    right: dict[str, dict[Any, pd.DataFrame]] = {}
    for row in trials[trials["status"] == "completed"].to_dict("records"):
        predictions = trial_predictions(run_dir, str(row["trial"]))
        if predictions is not None:
            right.setdefault(row["method"], {})[row["seed"]] = predictions.sort_values("row").reset_index(drop=True)
    return right


def paired_tests(table: pd.DataFrame, trials: pd.DataFrame, run_dir: str) -> pd.DataFrame:
    """The summary with, per method, its test accuracy gap to the best method (``best_trial``: by
    validation) on the same test rows, from each completed trial's per-row predictions:
    ``vs_best_gap`` (best minus this, the mean over each method's completed seeds), its paired
    bootstrap 95% interval (rows resampled jointly across seeds) and sign-flip p (``paired_gap``),
    ``vs_best_per_seed`` (per seed both completed: gap [interval], McNemar's exact p) and ``vs_best``,
    the verdict: beyond chance where the interval excludes 0."""
    table = table.copy()
    for col in VS_BEST:
        table[col] = "" if col in ("vs_best_per_seed", "vs_best") else float("nan")
    best = best_trial(table)
    if best is None:
        return table
    right = _right(trials, run_dir)
    ours = right.get(best["method"], {})
    for i, method in enumerate(table["method"]):
        if method == best["method"]:
            table.loc[i, "vs_best"] = "best (by validation)"
            continue
        theirs = right.get(method, {})
        if not ours or not theirs:
            table.loc[i, "vs_best"] = "no per-row test predictions"
            continue
        frames = [*ours.values(), *theirs.values()]
        if any(len(f) != len(frames[0]) or not f["gold"].equals(frames[0]["gold"]) for f in frames):
            table.loc[i, "vs_best"] = "not the same test rows"
            continue
        a = np.stack([(f["pred"] == f["gold"]).to_numpy() for f in ours.values()])
        b = np.stack([(f["pred"] == f["gold"]).to_numpy() for f in theirs.values()])
        gap = paired_gap(a, b)
        table.loc[i, ["vs_best_gap", "vs_best_ci_low", "vs_best_ci_high", "vs_best_p"]] = [
            gap["gap"],
            gap["ci_low"],
            gap["ci_high"],
            gap["p"],
        ]
        per_seed = []
        for seed in sorted(set(ours) & set(theirs), key=str):
            x, y = a[list(ours).index(seed)], b[list(theirs).index(seed)]
            one = paired_gap(x[None], y[None])
            per_seed.append(
                f"seed {seed}: {one['gap']:+.3f} [{one['ci_low']:+.3f}, {one['ci_high']:+.3f}] "
                f"McNemar p {mcnemar_p(x, y):.2g}"
            )
        table.loc[i, "vs_best_per_seed"] = "; ".join(per_seed)
        seeds = f"{len(ours)} and {len(theirs)} seeds" if len(ours) != len(theirs) else f"{len(ours)} seeds"
        table.loc[i, "vs_best"] = f"{gap_verdict(gap)} ({seeds}, {a.shape[1]} rows)"
    return table


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """The summary for reading: "mean ± sd" (sd left out where the seeds agree), counts as integers."""
    heads = ("method", "lr", "lr_searched", "tune_trials", "seeds", "completed")
    shown = table[[c for c in heads if c in table.columns]].copy()
    for col in [*SCORES, *COSTS]:
        counts = col in ("trainable_params", "checkpoint_bytes", "peak_mem_mb", "steps_to_target")
        shown[col] = [
            _mean_sd(m, sd, "{:.0f}" if counts else "{:.4g}")
            for m, sd in zip(table[col], table[f"{col}_sd"], strict=True)
        ]
    shown["reached_target"] = table["reached_target"]
    if "vs_best" in table.columns:
        shown["vs_best"] = table["vs_best"]
        shown["vs_best_gap"] = [
            "" if pd.isna(g) else f"{g:+.3f} [{lo:+.3f}, {hi:+.3f}], p {p:.2g}"
            for g, lo, hi, p in table[["vs_best_gap", "vs_best_ci_low", "vs_best_ci_high", "vs_best_p"]].itertuples(
                index=False
            )
        ]
        shown["vs_best_per_seed"] = table["vs_best_per_seed"]
    shown["error"] = table["error"].fillna("")
    return shown


def _mean_sd(mean: float, sd: float, fmt: str) -> str:
    if pd.isna(mean):
        return ""
    # One seed, or the same on every seed (a count, a fixed lr; the std of equal floats can be 1e-17).
    if pd.isna(sd) or sd <= 1e-9 * abs(mean):
        return fmt.format(mean)
    return f"{fmt.format(mean)} ± {fmt.format(sd)}"
