"""Ray Tune over Ray Train: every trial is a TorchTrainer; the command (``skray.commands``) says
what the trials are: one fixed trial (train), Optuna + ASHA (tune), methods x seeds (compare),
workers x ZeRO settings one point at a time (scale). Here: resources, the run directory, resuming.
All write one results format that ``skray.results`` reads. Running the same command on the same
config again resumes a run that did not reach its end (finished trials stay as they are).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.logger import JsonLoggerCallback
from ray.tune.utils.util import SafeFallbackEncoder

from skray import storage
from skray.cluster import capacity, connect
from skray.commands import COMMANDS, Command
from skray.config import ExperimentConfig, resolve_device, selection_metric
from skray.errors import ResourceError
from skray.report import rebuild
from skray.results import experiment


@dataclass
class Plan:
    cpus_per_worker: float
    max_concurrent: int


def plan_resources(
    cfg: ExperimentConfig, cluster: dict[str, float], can_grow: bool = False, command: Command = COMMANDS["train"]
) -> Plan:
    """Per-worker CPUs and trial concurrency that fit the cluster, or a clear error at once.

    Ray's default (1 CPU per worker plus 1 per trial) deadlocks a 2-CPU machine: trials take the
    CPUs their workers then wait for. Trials here reserve nothing; workers get a share that fits.
    A cluster that can grow (autoscaling GPU nodes from zero) is not held to what it has now:
    workers ask for 1 CPU (or train.cpus_per_worker) and wait for the autoscaler. A scaling grid
    is sized for its largest point and runs one point at a time, each worker with the same CPUs.
    """
    t = cfg.train
    workers, key = command.workers(cfg)
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    on_gpus = t.use_gpu is True
    if can_grow:
        per_worker = t.cpus_per_worker or 1.0
    else:
        if on_gpus and gpus < workers:
            raise ResourceError(
                f"{key}={workers} GPU workers, but the Ray cluster has {gpus:g} GPUs; "
                f"lower {key} or set train.use_gpu false"
            )
        # A GPU worker gets its GPU's share of the cores (offloaded optimizer steps run on them); a
        # lone trial (train, or a scaling grid's one point at a time) gets every core, which torch's
        # threads then use; trials that run side by side get one core per worker.
        lone = command.sequential or command.trials(cfg) == 1
        share = max(1.0, math.floor(cpus / gpus)) if on_gpus else (cpus / workers if lone else 1.0)
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
    params: dict, experiment: dict, command: str, cpus_per_worker: float, storage_path: str, log_dir: str | None
) -> None:
    """A Tune trial: build a TorchTrainer for the trial's config; workers report through Tune.
    With a ``log_dir``, this process's output and each worker's go to files there."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from skray.console import output_to
    from skray.train.launch import build_trainer

    cfg = trial_experiment(command, experiment, params)
    name = f"train_{tune.get_context().get_trial_id()}"
    with output_to(f"{log_dir}/{name}.log" if log_dir else None):
        trainer = build_trainer(cfg, cpus_per_worker, storage_path, name, [TuneReportCallback()], log_dir)
        trainer.fit()


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

    return Progress(cmd.trials(cfg), cfg.train.max_steps, selection_metric(cfg.data.task))


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


class TrialReports(JsonLoggerCallback):
    """Each trial's ``result.json``, appended by skray straight in the run's storage. Tune writes it in
    a staging folder that it syncs over now and then, and starts it empty when a resume restarts a
    trial that has no Tune checkpoint, as skray's trials never do (they resume from Ray Train's): the
    sync then overwrote every report made before the resume (learning curves, the step-0 scores,
    steps_to_target). A report for a step at or before the last one kept (a trial restarted from an
    earlier checkpoint or from scratch) replaces the reports from that step on."""

    def __init__(self, run_dir: str) -> None:
        super().__init__()
        self.run_dir = run_dir

    def log_trial_start(self, trial: Trial) -> None:
        trial.init_local_path()
        self.update_config(trial, trial.config)  # params.json, as Tune writes it

    def log_trial_result(self, iteration: int, trial: Trial, result: dict) -> None:
        if trial not in self._trial_configs:
            self.log_trial_start(trial)
        path = storage.join(self.run_dir, trial.storage.trial_dir_name, "result.json")
        lines = storage.read_text(path).splitlines() if storage.exists(path) else []
        step = result.get("step")
        if step is not None:
            lines = [line for line in lines if _step(line) < step]
        lines.append(json.dumps(result, cls=SafeFallbackEncoder))
        storage.write_text(path, "".join(f"{line}\n" for line in lines))

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        self._trial_configs.pop(trial, None)


def _step(line: str) -> float:
    try:
        return json.loads(line).get("step", -math.inf)
    except json.JSONDecodeError:  # a line cut by a crash (Tune's own writer appended): dropped
        return math.inf


def _runs_named(root: str, cfg: ExperimentConfig, command: str) -> list[str]:
    """Run directories of this name and command under ``root``, oldest first (their names end in the start time)."""
    return [d for d in storage.subdirs(root) if d.rsplit("/", 1)[-1].startswith(f"{cfg.name}-{command}-")]


def _started_with(run: str, cfg: ExperimentConfig, command: str) -> bool:
    return experiment(run) == json.loads(json.dumps({"command": command, "config": cfg.model_dump()}))


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


def run_experiment(
    cfg: ExperimentConfig,
    command: str = "train",
    address: str | None = None,
    retry_errored: bool = False,
    verbose: bool = True,
) -> tuple[str, pd.DataFrame]:
    """Run one fixed trial (train), an Optuna/ASHA search (tune), a methods x seeds grid
    (compare) or a scaling grid (scale); return the run dir and the table to show.

    A run of the same name, command and config that did not finish is resumed instead: its
    finished trials are kept, the interrupted ones go on from their last checkpoint. Trials that
    failed stay failed unless ``retry_errored``, which runs them again from their last checkpoint
    (also in a run that finished). Not ``verbose``: a line per trial start, evaluation and end
    instead of Ray's output, and every Ray process's output in ``RUN_DIR/logs/`` (a local run dir).
    """
    cmd = COMMANDS[command]
    cmd.check(cfg)
    from skray.preflight import check_memory, preflight

    root = storage.location(cfg.storage_path)
    storage.ensure_writable(root)
    params = preflight(cfg)
    room = capacity(connect(address, quiet=not verbose))
    workers, key = cmd.workers(cfg)
    gpus = room.gpus
    if cfg.train.use_gpu == "auto" and gpus is not None and 0 < gpus < workers:
        print(
            f"skray: train.use_gpu auto: the cluster has {gpus:g} GPUs for {workers} workers, so this run trains "
            f"on CPUs; set {key} to {int(gpus)} (or fewer) to use the GPUs",
            file=sys.stderr,
        )
    cfg = cfg.model_copy(update={"train": resolve_device(cfg.train, gpus, workers)})
    plan = plan_resources(cfg, room.resources, room.grows, cmd)
    fits = check_memory(cfg, params, workers, key, list(room.node_memory), room.grows)
    if not room.grows:
        plan = Plan(plan.cpus_per_worker, min(plan.max_concurrent, fits))
    resumed = unfinished_run(root, cfg, command, retry_errored)
    run_dir = resumed or storage.join(root, f"{cfg.name}-{command}-{time.strftime('%Y%m%d-%H%M%S')}")
    prepared = storage.join(run_dir, "prepared.json")  # what the trials run, after the command's preparation
    restore = resumed is not None and tune.Tuner.can_restore(run_dir)
    if resumed and not restore:
        print(f"skray: resuming {run_dir} (same command and config), cut before its trials started", file=sys.stderr)
    if resumed and storage.exists(prepared):
        cfg = ExperimentConfig.model_validate(json.loads(storage.read_text(prepared)))
    elif not restore:  # a new run, or one cut while preparing (compare.tune's searches go on where they were)
        if not resumed:
            storage.write_text(
                storage.join(run_dir, "experiment.json"),
                json.dumps({"command": command, "config": cfg.model_dump()}, indent=2),
            )
        ready = cmd.prepare(cfg, run_dir, plan.cpus_per_worker * workers)
        if ready != cfg:
            storage.write_text(prepared, json.dumps(ready.model_dump(), indent=2))
        cfg = ready

    log_dir = None if verbose or storage.is_uri(run_dir) else storage.join(storage.location(run_dir), "logs")
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            experiment=cfg.model_dump(),
            command=command,
            cpus_per_worker=plan.cpus_per_worker,
            storage_path=run_dir,
            log_dir=log_dir,
        ),
        {"CPU": 0, "memory": 1},  # a trial only waits on its workers; it must not hold their CPUs
    )
    if restore:
        again = "; failed trials run again from their last checkpoint" if retry_errored else ""
        print(
            f"skray: resuming {run_dir} (same command and config); finished trials are kept{again}",
            file=sys.stderr,
        )
        storage.remove(storage.join(run_dir, "finished"))  # until this run reaches its end again
        tuner = tune.Tuner.restore(
            run_dir, trainable, resume_unfinished=True, resume_errored=retry_errored, restart_errored=False
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=cmd.param_space(cfg),
            tune_config=cmd.tune_config(cfg, plan.max_concurrent, run_dir),
            run_config=tune.RunConfig(
                name=run_dir.rsplit("/", 1)[-1],
                storage_path=root,
                verbose=1 if verbose else 0,
                callbacks=[TrialReports(run_dir), *trackers(cfg, run_dir)] + ([] if verbose else [progress(cfg, cmd)]),
            ),
        )
    from skray.console import tune_output

    with tune_output(verbose):
        results = tuner.fit()
    if ran_to_end(results, cmd.trials(cfg)):
        # Only a sweep that ran to its end is marked so; after Ctrl-C unfinished trials read "interrupted".
        storage.write_text(storage.join(run_dir, "finished"), time.strftime("%Y-%m-%dT%H:%M:%S"))
    return run_dir, rebuild(run_dir)
