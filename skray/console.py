"""What a run prints while it runs: a line per trial start, evaluation and end, and where the sweep
stands, instead of Ray's per-report tables and every worker's log (those go to ``RUN_DIR/logs/``;
``-v`` gives Ray's own output back).

The lines are written on the driver by a Tune callback, so they read the same on a laptop and for
``ray job submit``, where the driver's output is the job's log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any

from ray import tune

# Tune's parameters worth naming when a trial starts (what the searcher or grid chose).
SHOWN_PARAMS = ("method", "seed", "wording", "prefix_length", "adapter_rank", "head", "lr", "point")


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, str) and len(v) > 40:
        return repr(v[:37] + "...")
    if isinstance(v, dict):  # a scale point
        return "-".join(str(x) for x in v.values())
    return repr(v) if isinstance(v, str) else str(v)


class Progress(tune.Callback):
    """One line when a trial starts, evaluates and ends; after each, where the sweep stands (trials
    and steps done, elapsed, an estimate of what is left from the steps' pace so far)."""

    def __init__(self, trials: int, steps_per_trial: int, key: str) -> None:
        self.trials, self.steps_per_trial, self.key = trials, steps_per_trial, key
        self.started = time.monotonic()
        self.steps: dict[str, int] = {}  # each trial's steps done (or, once it ended, all it will take)
        self.ended = 0
        self.last_report: dict[str, tuple[float, int]] = {}  # trial -> (time, step) of its previous report
        self.done_before = 0  # steps done before this driver started (a resumed run)
        self.counted: set[str] = set()  # trials whose end is counted in ``ended``

    def __setstate__(self, state: dict) -> None:
        """Unpickled from the run's tuner.pkl when a run is resumed: time and pace count from now, so the
        hours the run stood still are neither elapsed time nor slowness."""
        self.__dict__.update(state)
        self.counted = state.get("counted", set())  # pickled before skray counted ends by trial
        self.started = time.monotonic()
        self.done_before = sum(self.steps.values())
        self.last_report = {}

    def _catch_up(self, trials: list) -> None:
        """Count what a resumed run did before this driver: tuner.pkl holds the callback as it was when
        the run started, so the trials that ended since and the steps the others made come from the
        trials Tune restored. Those steps are not this driver's pace."""
        for t in trials:
            if t.trial_id in self.counted or t.trial_id in self.steps and t.status not in ("TERMINATED", "ERROR"):
                continue
            before = self.steps.get(t.trial_id, 0)
            if t.status in ("TERMINATED", "ERROR"):
                self.counted.add(t.trial_id)
                self.ended += 1
                self.steps[t.trial_id] = self.steps_per_trial
            else:
                self.steps[t.trial_id] = int((t.last_result or {}).get("step", 0))
            self.done_before += self.steps[t.trial_id] - before

    def _other(self, result: dict, split: str) -> str:
        """The other of accuracy and F1 (both are always reported; ``key`` is the one that selects)."""
        other = "f1" if self.key == "acc" else "acc"
        value = result.get(f"{split}_{other}")
        return f" ({other} {value:.3f})" if isinstance(value, float) else ""

    def _say(self, line: str) -> None:
        print(line, flush=True)  # sys.stdout looked up each time: Tune pickles its callbacks

    def _where(self) -> str:
        done, total = sum(self.steps.values()), self.trials * self.steps_per_trial
        elapsed, paced = time.monotonic() - self.started, done - self.done_before
        eta = f", about {_duration(elapsed / paced * (total - done))} left" if 0 < paced and done < total else ""
        return f"  [{self.ended}/{self.trials} trials ended, {done}/{total} steps, {_duration(elapsed)}{eta}]"

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._catch_up(trials)
        params = ", ".join(f"{k}={_value(trial.config[k])}" for k in SHOWN_PARAMS if k in trial.config)
        self.steps.setdefault(trial.trial_id, 0)
        self.last_report[trial.trial_id] = (time.monotonic(), self.steps[trial.trial_id])
        self._say(f"trial {trial.trial_id} started: {params}")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self._catch_up(trials)
        step = int(result.get("step", 0))
        then, before = self.last_report.get(trial.trial_id, (self.started, self.steps.get(trial.trial_id, 0)))
        now = time.monotonic()
        pace = f", {(step - before) / (now - then):.2f} steps/s" if step > before and now > then else ""
        self.last_report[trial.trial_id] = (now, step)
        self.steps[trial.trial_id] = step
        score = result.get(f"val_{self.key}")
        shown = f"val {self.key} {score:.3f}{self._other(result, 'val')}" if isinstance(score, float) else "evaluated"
        self._say(f"trial {trial.trial_id} step {step}/{self.steps_per_trial}: {shown}{pace}{self._where()}")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        last = trial.last_result or {}
        test = last.get(f"test_{self.key}")
        if test is not None:
            self._end(trial, f"completed: test {self.key} {test:.3f}{self._other(last, 'test')}")
        else:
            self._end(trial, f"stopped early at step {last.get('step', 0)} (ASHA)")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._end(trial, "failed (its error is in the table)")

    def _end(self, trial, line: str) -> None:
        if trial.trial_id not in self.counted:
            self.counted.add(trial.trial_id)
            self.ended += 1
        # An ended trial's remaining steps will not run: done, but not this driver's pace.
        self.done_before += self.steps_per_trial - self.steps.get(trial.trial_id, 0)
        self.steps[trial.trial_id] = self.steps_per_trial
        self._say(f"trial {trial.trial_id} {line}{self._where()}")


@contextlib.contextmanager
def output_to(path: str | None):
    """This process's stdout and stderr (Python's and the file descriptors: C++ and subprocess output) appended
    to ``path`` for the block; a no-op for None. For Ray's worker processes, which run one trial's
    worker each."""
    if path is None:
        yield
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


@contextlib.contextmanager
def tune_output(verbose: bool):
    """Ray Tune's console output for the block: its own (verbose), or none. Tune's new output engine
    prints an experiment header at any verbosity, so the quiet mode takes its legacy reporter, which
    at verbosity 0 prints nothing (a user's own RAY_AIR_NEW_OUTPUT wins). Quiet, Tune's warning on
    Ctrl-C that names ``Tuner.restore`` is dropped too: skray says how to go on (the same command)."""
    if verbose:
        yield
        return
    tune_log = logging.getLogger("ray.tune.tune")
    tune_log.addFilter(_not_interrupted)
    try:
        with environment_default("RAY_AIR_NEW_OUTPUT", "0"):
            yield
    finally:
        tune_log.removeFilter(_not_interrupted)


def _not_interrupted(record: logging.LogRecord) -> bool:
    """False for Tune's "... has been interrupted, but the most recent state was saved" warning."""
    return "has been interrupted, but the most recent state was saved" not in record.getMessage()


@contextlib.contextmanager
def environment_default(name: str, value: str):
    """The environment variable ``name`` set to ``value`` for the block, where the user has not set it
    (their setting wins, and stays)."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
