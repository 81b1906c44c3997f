"""Compare runs of one experiment done in pieces (some of its methods each, on other days or machines)
as one run: every trial's reports and per-row test predictions, never a checkpoint, copied into one
folder whose tables and paired tests then cover every method, as if one run had done them all.

A comparison too long for one sitting runs method by method (``--set 'compare.methods=[lora]'``), and
each piece merges into the same folder when it ends; the folder is small enough to keep in git.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from skray import storage
from skray.config import compare_labels
from skray.errors import ConfigError
from skray.report import rebuild
from skray.results import experiment, is_slot, load_results, trial_of, trial_predictions, write_predictions, write_table

TRIAL_FILES = ("params.json", "result.json", "error.txt")  # what the results table reads from a trial
RUN_FILES = ("experiment.json", "prepared.json", "finished")
MAY_DIFFER = {"name", "storage_path", "compare.methods", "compare.pack"}  # pack: how, not what, it ran


def merge_runs(sources: list[str], into: str) -> pd.DataFrame:
    """Copy ``sources`` (finished compare runs of one experiment, apart from their methods) into
    ``into``, a new folder or one an earlier merge made (its methods are kept), and rebuild its tables.
    Everything is checked before anything is written: a refused merge leaves ``into`` as it was."""
    into = storage.location(into)
    runs = [storage.location(s) for s in sources]
    if storage.exists(storage.join(into, "experiment.json")):
        runs = [into, *(r for r in runs if r != into)]
    elif not storage.is_empty(into):
        raise ConfigError(f"--into {into}: a folder that holds no skray run; name a new folder (or an earlier merge)")
    started = [_finished_compare(run) for run in runs]
    first = started[0]["config"]
    for run, one in zip(runs[1:], started[1:], strict=True):
        _same_experiment(runs[0], first, run, one["config"])
    methods = [one["config"]["compare"]["methods"] for one in started]
    _each_method_once(runs, methods, first["train"]["lr"])
    trials = [_trial_dirs(run) for run in runs]
    _trials_unique(runs, trials)

    pieces = sum((one.get("merged_from", [run]) for run, one in zip(runs, started, strict=True)), [])
    whole = {**started[0], "config": _with_methods(first, sum(methods, [])), "merged_from": pieces}
    storage.write_text(storage.join(into, "experiment.json"), json.dumps(whole, indent=2))
    prepared = [_prepared(run) for run in runs]
    if all(p is not None for p in prepared):  # compare.tune: each method at the setting its search chose
        ran = _with_methods(prepared[0], sum((p["compare"]["methods"] for p in prepared), []))
        storage.write_text(storage.join(into, "prepared.json"), json.dumps(ran, indent=2))
    for run, dirs in zip(runs, trials, strict=True):
        if run != into:
            _copy_trials(run, into, dirs)
            for search in storage.subdirs(storage.join(run, "tuning")):  # compare.tune's searches, as evidence
                _copy_run(search, storage.join(into, "tuning", search.rsplit("/", 1)[-1]))
    storage.write_text(storage.join(into, "finished"), storage.read_text(storage.join(runs[0], "finished")))
    return rebuild(into)


def _finished_compare(run: str) -> dict[str, Any]:
    """What the run was started with; refused unless it is a compare run that reached its end."""
    started = experiment(run) if storage.is_dir(run) else {}
    if not started:
        raise ConfigError(f"{run}: not a skray run directory (no experiment.json)")
    if started.get("command") != "compare":
        raise ConfigError(f"{run}: a {started.get('command')} run; only compare runs are merged")
    if not storage.exists(storage.join(run, "finished")):
        raise ConfigError(f"{run}: has not finished; run its command again to finish it, then merge")
    return started


def _same_experiment(a_run: str, a: dict[str, Any], b_run: str, b: dict[str, Any]) -> None:
    for key, left, right in _differences(a, b):
        if key not in MAY_DIFFER:
            raise ConfigError(
                f"{b_run} differs from {a_run} in {key} ({right!r} against {left!r}): "
                "only runs of one experiment that differ in compare.methods are merged"
            )


def _differences(a: Any, b: Any, prefix: str = ""):
    """(dotted key, a's value, b's value) wherever two nested dicts differ, outermost first."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            yield from _differences(a.get(key), b.get(key), f"{prefix}{key}" if not prefix else f"{prefix}.{key}")
    elif a != b:
        yield prefix, a, b


def _each_method_once(runs: list[str], methods: list[list[Any]], lr: float) -> None:
    """Every method label in one run only, and the same label in the merge as in its run."""
    seen: dict[str, str] = {}
    for run, entries in zip(runs, methods, strict=True):
        for label in compare_labels(entries, lr):
            if label in seen:
                raise ConfigError(f"method {label} ran in both {seen[label]} and {run}; merge one of them")
            seen[label] = run
    try:
        union = compare_labels(sum(methods, []), lr)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if union != list(seen):  # the same kind in two runs, named apart only by lr once together
        raise ConfigError(f"the runs name their methods {list(seen)} apart, {union} together; merge them in one")


def _trial_dirs(run: str) -> dict[str, str]:
    """A run's trials: folder -> trial id (folders with params.json, without a packed run's slots:
    their members are the trials)."""
    dirs = {}
    for d in storage.subdirs(run):
        path = storage.join(d, "params.json")
        if storage.exists(path) and not is_slot(json.loads(storage.read_text(path))):
            dirs[d] = _trial_id(d)
    return dirs


def _trials_unique(runs: list[str], trials: list[dict[str, str]]) -> None:
    """No two runs hold a trial of the same id or folder name: the merge reads predictions by trial id."""
    owner: dict[str, str] = {}
    for run, dirs in zip(runs, trials, strict=True):
        for d, trial in dirs.items():
            for key in {d.rsplit("/", 1)[-1], trial}:
                if owner.setdefault(key, run) != run:
                    raise ConfigError(f"{owner[key]} and {run} both hold a trial {key}; merge one of them")


def _trial_id(trial_dir: str) -> str:
    """The id its reports give (as the results table reads it), else the one its folder's name says."""
    reports = storage.read_reports(storage.join(trial_dir, "result.json"))
    name = trial_dir.rsplit("/", 1)[-1]
    return str((reports[-1] if reports else {}).get("trial_id") or trial_of(name.removeprefix("tuned_")))


def _with_methods(config: dict[str, Any], methods: list[Any]) -> dict[str, Any]:
    return {**config, "compare": {**config["compare"], "methods": methods}}


def _prepared(run: str) -> dict[str, Any] | None:
    path = storage.join(run, "prepared.json")
    return json.loads(storage.read_text(path)) if storage.exists(path) else None


def _copy_trials(run: str, into: str, dirs: dict[str, str]) -> None:
    """Each trial's reports (and error), and beside them its final test's per-row predictions."""
    for d, trial in dirs.items():
        name = d.rsplit("/", 1)[-1]
        for file in TRIAL_FILES:
            if storage.exists(storage.join(d, file)):
                storage.write_text(storage.join(into, name, file), storage.read_text(storage.join(d, file)))
        predictions = trial_predictions(run, trial)
        if predictions is not None:
            write_predictions(storage.join(into, name), predictions)


def _copy_run(run: str, into: str) -> None:
    """A whole run, results only (no checkpoints, no Tune state), with its trials' table."""
    for file in RUN_FILES:
        if storage.exists(storage.join(run, file)):
            storage.write_text(storage.join(into, file), storage.read_text(storage.join(run, file)))
    _copy_trials(run, into, _trial_dirs(run))
    write_table(load_results(into), into)
