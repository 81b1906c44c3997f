"""A Tune trial as Ray Train's TorchTrainer, and what the driver keeps of it: the resources a trial's
workers get, its reports in ``result.json`` (kept straight in the run's storage, a re-sent one once),
the trackers, the progress lines, and which run directory an unfinished run left. The command
(``skray.commands``) says what the trials are; ``skray.run`` runs them. All write one results format
that ``skray.results`` reads.
"""

from __future__ import annotations

import contextlib
import json
import math
import posixpath
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.logger import JsonLoggerCallback
from ray.tune.result import AUTO_RESULT_KEYS
from ray.tune.utils.util import SafeFallbackEncoder

from skray import storage
from skray.cluster import Capacity, remove_orphaned_placement_groups
from skray.commands import COMMANDS, Command
from skray.config import ExperimentConfig, selection_metric
from skray.console import environment_default
from skray.errors import ResourceError
from skray.results import experiment
from skray.train.checkpoint import REPLAYED


@dataclass
class Plan:
    cpus_per_worker: float
    max_concurrent: int


def plan_resources(cfg: ExperimentConfig, room: Capacity, command: Command = COMMANDS["train"]) -> Plan:
    """Per-worker CPUs and trial concurrency that fit the cluster, or a clear error at once.

    Ray's default (1 CPU per worker plus 1 per trial) deadlocks a 2-CPU machine: trials take the
    CPUs their workers then wait for. Trials here reserve nothing; workers get a share that fits.
    A cluster that can grow (autoscaling GPU nodes from zero) is not held to what it has now:
    workers ask for 1 CPU (or train.cpus_per_worker) and wait for the autoscaler. A scaling grid
    is sized for its largest point and runs one point at a time, each worker with the same CPUs.
    """
    t = cfg.train
    workers, key = command.workers(cfg)
    cpus, gpus = room.resources.get("CPU", 0.0), room.resources.get("GPU", 0.0)
    on_gpus = t.use_gpu is True
    can_grow = room.grows
    if can_grow:
        per_worker = t.cpus_per_worker or 1.0
    else:
        if on_gpus and gpus < workers:
            raise ResourceError(
                f"{key}={workers} GPU workers, but the Ray cluster has {gpus:g} GPUs; "
                f"lower {key} or set train.use_gpu false"
            )
        # A GPU worker gets its GPU's share of its node's cores (offloaded optimizer steps run on
        # them); a lone trial (train, or a scaling grid's one point at a time) gets every core, which
        # torch's threads then use; trials that run side by side get one core per worker.
        lone = command.sequential or command.trials(cfg) == 1
        share = max(1.0, room.cpus_per_gpu) if on_gpus else (cpus / workers if lone else 1.0)
        per_worker = t.cpus_per_worker or min(share, cpus / workers)
        if per_worker <= 0 or workers * per_worker > cpus + 1e-9:
            raise ResourceError(
                f"{key}={workers} x train.cpus_per_worker={per_worker:g} needs {workers * per_worker:g} CPUs "
                f"but the Ray cluster has {cpus:g}; lower them or add nodes"
            )
    if command.sequential:
        return Plan(per_worker, 1)
    concurrent = max(1, math.floor(cpus / (workers * per_worker) + 1e-9))
    if on_gpus and not can_grow:
        concurrent = min(concurrent, max(1, math.floor(gpus / workers + 1e-9)))
    limit = cfg.max_concurrent_trials
    if limit:  # a growing cluster may run more trials than fit now; a fixed one may not
        concurrent = limit if can_grow else min(concurrent, limit)
    return Plan(per_worker, concurrent)


def run_trial(
    params: dict,
    experiment: dict,
    command: str,
    cpus_per_worker: float,
    storage_path: str,
    log_dir: str | None,
    broker: str | None = None,
    pack: int = 1,
    pack_auto: bool = False,
) -> None:
    """A Tune trial: build a TorchTrainer for the trial's config; workers report through Tune, less
    the re-sent reports the driver logged already (``ReplayFilter``). With a ``log_dir``, this
    process's output and each worker's go to files there.

    A trial whose last logged report ends it (Tune marks ``done`` the one it finished or ASHA stopped
    it at) ended before a driver that died could save so: it does not train on; that report goes to
    Tune again instead, so that Tune ends it as it was.

    A packed run's trials are slots (``params``: {"slot": n}): the workers train ``pack`` members at a
    time (with ``pack_auto``, up to ``pack``: as many as save step time) that the run's broker (the
    actor named ``broker``) hands out (``skray.broker``, ``skray.train.packed``)."""
    from skray.console import output_to
    from skray.train.launch import build_trainer

    context = tune.get_context()
    logged = storage.join(storage_path, posixpath.basename(context.get_trial_dir().rstrip("/")), "result.json")
    ended = _ended_at(logged)
    if ended is not None:
        tune.report({k: v for k, v in ended.items() if k not in AUTO_RESULT_KEYS} | {REPLAYED: True})
        return
    slot = None
    if "slot" in params:
        cfg = trial_experiment("train", experiment, {})
        slot = {"broker": broker, "slot": params["slot"], "pack": pack, "auto": pack_auto, "run_dir": storage_path}
    else:
        cfg = trial_experiment(command, experiment, {k: v for k, v in params.items() if k != "member"})
    # A solo member's checkpoints go where a slot's members' do, the folder named for it (MEMBER_DIR)
    name = f"{'slot' if slot else 'train'}_{params.get('member') or context.get_trial_id()}"
    with output_to(f"{log_dir}/{name}.log" if log_dir else None):
        trainer = build_trainer(cfg, cpus_per_worker, storage_path, name, [ReplayFilter(logged)], log_dir, slot)
        trainer.fit()
    await_logged_end(logged)


def await_logged_end(logged: str, timeout_s: float = 120.0) -> None:
    """Return once the driver logged the trial's final report (at most ``timeout_s`` on).

    Ray Train (V2) hands each report from its controller to this trial's main thread through a one-item
    queue, which that thread polls in turn with Tune's one-slot result queue (Ray 2.60,
    ray/train/_internal/session.py, ``_get_result_from_queues``). ``fit()`` can return while the final
    report still waits in the first queue; had ``run_trial`` returned then, Tune's wrapper would put its
    end marker (RESULT_DUPLICATE) in the result queue first, and the main thread either took the marker
    (the final report lost) or, taking the report, blocked for ever putting it into the full queue that
    only it empties: the trial hung (seen once in ~20 runs of the test suite). Logged means handed on."""
    deadline = time.monotonic() + timeout_s
    while _ended_at(logged) is None and time.monotonic() < deadline:
        time.sleep(0.1)


class ReplayFilter(TuneReportCallback):
    """Tune's report callback (it runs in Ray Train's controller) that drops a re-sent report
    (``REPLAYED``: a restored trial sends again what its checkpoint kept) whose step the trial's
    ``result.json`` holds: the driver logged it, and Tune's scheduler and searcher, restored from an
    older save than the log, would judge it again (ASHA could stop the trial at a rung it had passed,
    before the steps logged after it). Reports the driver never logged go on, as they would have had
    it lived. (A trial whose final report was logged does not get here: ``run_trial``.)"""

    def __init__(self, logged: str) -> None:
        super().__init__()
        self.logged = logged

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        report = metrics[0]
        if report.get(REPLAYED) and report["step"] in _logged_steps(self.logged):
            return
        super().after_report(run_context, metrics, checkpoint)


def trial_experiment(command: str, experiment: dict, params: dict) -> ExperimentConfig:
    """The one experiment a trial's workers run. The sections that plan the run (search, compare,
    scale) stay in the run's experiment.json: a worker validating them against its own trial's
    settings could refuse them (a compare entry at its own lr beside a plain one of the same kind
    reads as two entries alike once train.lr is that lr)."""
    cfg = COMMANDS[command].trial_config(ExperimentConfig.model_validate(experiment), params)
    return cfg.model_copy(update={"search": None, "compare": None, "scale": None})


def progress(cfg: ExperimentConfig, cmd: Command) -> tune.Callback:
    """The run's own progress lines (skray.console), for as many trials and steps as the command plans."""
    from skray.console import Progress

    return Progress(cmd.trials(cfg), cfg.train.max_steps, selection_metric(cfg.data.task, cfg.train.select_by))


def trackers(cfg: ExperimentConfig, run_dir: str) -> list[tune.Callback]:
    """Ray Tune's own logger callbacks for ``cfg.tracking``: TensorBoard event files in each trial's
    folder, MLflow runs (one per trial, in the experiment named after the run)."""
    callbacks: list[tune.Callback] = []
    if cfg.tracking.tensorboard:
        from ray.tune.logger import TBXLoggerCallback

        callbacks.append(TBXLoggerCallback())
    if cfg.tracking.mlflow:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        m = cfg.tracking.mlflow
        callbacks.append(
            MLflowLoggerCallback(tracking_uri=m.tracking_uri, experiment_name=m.experiment_name or cfg.name)
        )
    return callbacks


def trackers_only() -> contextlib.AbstractContextManager:
    """Tune's loggers for a block: only those skray adds (``trackers``, ``TrialReports``). Tune adds
    its CSV and TensorBoard loggers to every trial unless told not to (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS):
    tracking.tensorboard false still gave event files, and a packed run's slots got them too."""
    return environment_default("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


class TrialReports(JsonLoggerCallback):
    """Each trial's ``result.json``, appended by skray straight in the run's storage. Tune writes it in
    a staging folder that it syncs over now and then, and starts it empty when a resume restarts a
    trial that has no Tune checkpoint, as skray's trials never do (they resume from Ray Train's): the
    sync then overwrote every report made before the resume (learning curves, the step-0 scores,
    steps_to_target). A report for a step at or before the last one kept (a trial restarted from an
    earlier checkpoint or from scratch) replaces the reports from that step on; a re-sent one
    (``REPLAYED``: the same report again, from a restored trial, see ``ReplayFilter``) whose step is
    here already is dropped, so the line stays as first written."""

    def __init__(self, run_dir: str) -> None:
        super().__init__()
        self.run_dir = run_dir

    def log_trial_start(self, trial: Trial) -> None:
        trial.init_local_path()
        self.update_config(trial, trial.config)  # params.json, as Tune writes it
        # Tune's closing analysis reads every started trial's file: a slot reports only at its end, and a
        # run stopped before then printed "Could not fetch metrics ... result.json ... not found"
        path = storage.join(self.run_dir, trial.storage.trial_dir_name, "result.json")
        if not storage.exists(path):
            storage.write_text(path, "")

    def log_trial_result(self, iteration: int, trial: Trial, result: dict) -> None:
        if trial not in self._trial_configs:
            self.log_trial_start(trial)
        if "member" in trial.config:  # a packed tune's solo member: its row and Optuna trial go by its id
            result = result | {"trial_id": trial.config["member"]}
        path = storage.join(self.run_dir, trial.storage.trial_dir_name, "result.json")
        reports, step = storage.read_reports(path), result.get("step")
        if result.get(REPLAYED) and step in {report.get("step", -math.inf) for report in reports}:
            return
        if step is not None:
            reports = [report for report in reports if report.get("step", -math.inf) < step]
        lines = [json.dumps(report, cls=SafeFallbackEncoder) for report in [*reports, result]]
        storage.write_text(path, "".join(f"{line}\n" for line in lines))

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        self._trial_configs.pop(trial, None)


# What a Tune trial's folder holds before its first report: Tune's parameters and TrialReports' empty log.
UNREPORTED = {"params.json", "params.pkl", "result.json"}


def remove_unreported_trials(run_dir: str) -> None:
    """Once every trial of a run ended, the trial folders with no report, no error and nothing else:
    what a driver killed just after starting a trial leaves, where the resumed run (restored from an
    experiment state saved before that start) never knew the trial and ran another in its place.
    Left there, such a folder read as a trial with no scores (or failed the steps' check of a run)."""
    for folder in storage.subdirs(run_dir):
        held, log = storage.names(folder), storage.join(folder, "result.json")
        if "result.json" in held and held <= UNREPORTED and not storage.read_reports(log):
            storage.remove_dir(folder)


class PlacementGroupReaper(tune.Callback):
    """Every ``every_s`` of a run, frees the placement groups that trials' Ray Train controllers left
    behind as Tune ended them (``skray.cluster.remove_orphaned_placement_groups``): one such group held
    a CPU, and the next trial waited on it for ever."""

    def __init__(self, every_s: float = 2.0) -> None:
        self.every_s, self.last = every_s, -math.inf

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        for pg in remove_orphaned_placement_groups():
            print(f"skray: freed placement group {pg}, left behind by an ended trial's Ray Train run", file=sys.stderr)


def _ended_at(path: str) -> dict | None:
    """A trial's last logged report if it ended the trial (``done``), else None."""
    reports = storage.read_reports(path)
    return reports[-1] if reports and reports[-1].get("done") else None


def _logged_steps(path: str) -> set[float]:
    """The steps of the reports in a trial's ``result.json`` (none before its first)."""
    return {report.get("step", -math.inf) for report in storage.read_reports(path)}


def _runs_named(root: str, cfg: ExperimentConfig, command: str) -> list[str]:
    """Run directories of this name and command under ``root``, oldest first (their names end in the start time)."""
    return [d for d in storage.subdirs(root) if d.rsplit("/", 1)[-1].startswith(f"{cfg.name}-{command}-")]


def _started_with(run: str, cfg: ExperimentConfig, command: str) -> bool:
    """Whether ``run`` was started by ``command`` with ``cfg``, read through today's config model: a
    setting added to skray since, at its default, leaves the run the same (a long run goes on across
    an upgrade); one removed or renamed makes it another."""
    started = experiment(run)
    if started.get("command") != command:
        return False
    try:
        then = ExperimentConfig.model_validate(started.get("config"))
    except ValueError:
        return False
    return json.loads(json.dumps(then.model_dump())) == json.loads(json.dumps(cfg.model_dump()))


def _has_failed_trials(run: str) -> bool:
    return any(storage.exists(storage.join(trial, "error.txt")) for trial in storage.subdirs(run))


def unfinished_run(root: str, cfg: ExperimentConfig, command: str, retry_errored: bool = False) -> str | None:
    """The newest run of this name and command, if it was started with this very config and did
    not reach its end (driver killed, Ctrl-C, also while the command prepared its trials, e.g.
    compare.tune's searches), or reached it with failed trials that ``retry_errored`` asks to run
    again: running the same command again resumes it."""
    runs = _runs_named(root, cfg, command)
    if not runs or not _started_with(runs[-1], cfg, command):
        return None
    run = runs[-1]
    if not tune.Tuner.can_restore(run) or not storage.exists(storage.join(run, "finished")):
        return run
    return run if retry_errored and _has_failed_trials(run) else None


def finished_run(root: str, cfg: ExperimentConfig, command: str) -> str | None:
    """The newest run of this name, command and config that reached its end with no failed trial:
    what a resumed compare reuses of the per-method searches it had finished."""
    for run in reversed(_runs_named(root, cfg, command)):
        finished = storage.exists(storage.join(run, "finished"))
        if finished and _started_with(run, cfg, command) and not _has_failed_trials(run):
            return run
    return None


def ran_to_end(results: Iterable[tune.Result], planned: int) -> bool:
    """Whether every planned trial ended: failed, or made its last report (Tune marks it ``done``:
    skray's final report, or the one ASHA stopped it at). Tune's own count will not do: on Ctrl-C
    it marks the trials it was running TERMINATED, as if they had ended."""
    ended = [r for r in results if r.error is not None or (r.metrics or {}).get("done")]
    return len(ended) == planned
