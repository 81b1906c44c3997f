"""A run from start to end, as the steps a reader can follow: plan it on the cluster it gets, find its
directory (new, or one of the same name, command and config that did not finish), prepare what its
trials run, build the Tuner, run it, and mark it finished. What differs per command is the command
object's (``skray.commands``); how a Tune trial runs a TorchTrainer is ``skray.search``'s.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import ray
from ray import tune

from skray import storage
from skray.backbones import is_decoder
from skray.broker import (
    Lanes,
    MemberCallbacks,
    MemberJudge,
    broker_name,
    member_dirname,
    pack_size,
    slot_count,
    start_broker,
)
from skray.cluster import capacity, connect
from skray.commands import COMMANDS, Command
from skray.config import ExperimentConfig, TrainConfig, resolve_device
from skray.console import tune_output
from skray.preflight import check_memory, preflight
from skray.report import rebuild
from skray.search import (
    PlacementGroupReaper,
    TrialReports,
    finished_run,
    plan_resources,
    progress,
    ran_to_end,
    remove_unreported_trials,
    run_trial,
    trackers,
    trackers_only,
    unfinished_run,
)


@dataclass(frozen=True)
class RunPlan:
    """What a run was planned with: its config (devices resolved), where runs go, and resources."""

    cfg: ExperimentConfig
    root: str
    cpus_per_worker: float
    max_concurrent: int
    workers: int


@dataclass(frozen=True)
class RunDir:
    """The run's directory; ``resumed``: a run of the same name, command and config that did not reach
    its end; ``restore``: its trials had started, so Tune restores it."""

    path: str
    resumed: bool
    restore: bool


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
    plan = plan_run(cfg, cmd, address, verbose)
    run = find_run_dir(plan, command, retry_errored)
    cfg = prepare_trials(run, plan, cmd)
    packing = plan_packing(run, cfg, plan, cmd)
    tuner = build_tuner(run, cfg, plan, cmd, retry_errored, verbose, packing)
    with tune_output(verbose), trackers_only():
        results = tuner.fit()
    ended = packing.ended(results) if packing else ran_to_end(results, cmd.trials(cfg))
    if ended:
        remove_unreported_trials(run.path)
    mark_finished(run.path, ended)
    return run.path, rebuild(run.path)


def plan_run(cfg: ExperimentConfig, cmd: Command, address: str | None, verbose: bool) -> RunPlan:
    """Everything checked before anything starts (the command's section, the data and backbone, the
    storage), then the connected cluster decides devices, worker CPUs and how many trials fit at once
    (by CPUs, GPUs and memory)."""
    cmd.check(cfg)
    root = storage.location(cfg.storage_path)
    storage.ensure_writable(root)
    params = preflight(cfg)
    room = capacity(connect(address, quiet=not verbose))
    workers, key = cmd.workers(cfg)
    cfg = cfg.model_copy(update={"train": _devices(cfg.train, room.gpus, workers, key)})
    resources = plan_resources(cfg, room, cmd)
    fits = check_memory(cfg, params, workers, key, list(room.node_memory), room.grows)
    concurrent = resources.max_concurrent if room.grows else min(resources.max_concurrent, fits)
    return RunPlan(cfg, root, resources.cpus_per_worker, concurrent, workers)


def _devices(train: TrainConfig, gpus: float | None, workers: int, key: str) -> TrainConfig:
    """``use_gpu`` and ``precision`` as the cluster allows; said where ``auto`` falls back to CPUs."""
    if train.use_gpu == "auto" and gpus is not None and 0 < gpus < workers:
        print(
            f"skray: train.use_gpu auto: the cluster has {gpus:g} GPUs for {workers} workers, so this run trains "
            f"on CPUs; set {key} to {int(gpus)} (or fewer) to use the GPUs",
            file=sys.stderr,
        )
    return resolve_device(train, gpus, workers)


def find_run_dir(plan: RunPlan, command: str, retry_errored: bool) -> RunDir:
    """The newest run of this name, command and config if it did not reach its end (or has failed
    trials that ``retry_errored`` runs again), else a new directory named after the start time."""
    resumed = unfinished_run(plan.root, plan.cfg, command, retry_errored)
    path = resumed or storage.join(plan.root, f"{plan.cfg.name}-{command}-{time.strftime('%Y%m%d-%H%M%S')}")
    restore = resumed is not None and tune.Tuner.can_restore(path)
    if resumed and not restore:
        print(f"skray: resuming {path} (same command and config), cut before its trials started", file=sys.stderr)
    return RunDir(path, resumed is not None, restore)


def prepare_trials(run: RunDir, plan: RunPlan, cmd: Command) -> ExperimentConfig:
    """The experiment the trials run. A new run records what it was started with (experiment.json) and
    lets the command prepare (a screen of wordings, compare.tune's searches), keeping the result in
    prepared.json; a resumed run reads that back, and one cut while preparing prepares again (what
    finished then, e.g. a method's search, is reused)."""
    prepared = storage.join(run.path, "prepared.json")
    if run.resumed and storage.exists(prepared):
        return ExperimentConfig.model_validate(json.loads(storage.read_text(prepared)))
    if run.restore:
        return plan.cfg
    if not run.resumed:
        started = {"command": cmd.name, "config": plan.cfg.model_dump()}
        storage.write_text(storage.join(run.path, "experiment.json"), json.dumps(started, indent=2))
    ready = cmd.prepare(plan.cfg, run.path, plan.cpus_per_worker * plan.workers, search=search_or_reuse)
    if ready != plan.cfg:
        storage.write_text(prepared, json.dumps(ready.model_dump(), indent=2))
    return ready


@dataclass(frozen=True)
class Packing:
    """A packed run: ``slots`` Tune trials of ``pack`` seats each, fed by the ``broker`` actor, and beside
    them, one Tune trial each, the ``solo`` points of a grid whose methods train the backbone, or with
    ``solo_asked`` a search's members of such kinds, as the broker hands them out."""

    broker: Any  # held while the run lasts, so the actor lives; slots and the console find it by name
    pack: int
    slots: int
    solo: list[dict[str, Any]]
    solo_asked: bool = False
    auto: bool = False  # each slot keeps the seats its measured step time pays for, at most ``pack``

    @property
    def trials(self) -> list[dict[str, Any]]:
        """What Tune runs first: the slots, then the solo points."""
        return [{"slot": i} for i in range(self.slots)] + self.solo

    def ended(self, results: Any) -> bool:
        """Whether every trial ended (``ran_to_end``): the ones listed, and with ``solo_asked`` every
        member the broker handed out."""
        if self.solo_asked:
            return ran_to_end(results, len(results)) and ray.get(self.broker.exhausted.remote())
        return ran_to_end(results, len(self.trials))


def plan_packing(run: RunDir, cfg: ExperimentConfig, plan: RunPlan, cmd: Command) -> Packing | None:
    """For a command whose trials can be packed (tune, compare) where its pack setting asks (``auto``:
    wherever the method kinds it trains can share a frozen backbone): the members per slot, the slots,
    the run's broker, and a compare's points that run solo beside them (LoRA, full fine-tuning);
    None: every trial runs solo."""
    packing = cmd.packing(cfg)
    if packing is None:
        return None
    from skray.methods.packed import PACKABLE

    setting, kinds = packing
    points, key = cmd.points(cfg), f"{cmd.section}.pack"
    solo: list[dict[str, Any]] = []
    trials = len(points) if points else cmd.trials(cfg)
    if points:  # a grid: where some of its methods can be packed, the others run solo beside them
        point_kinds = [cmd.trial_config(cfg, point).method.kind for point in points]
        if any(k in PACKABLE for k in point_kinds) and any(k not in PACKABLE for k in point_kinds):
            solo = [p for p, k in zip(points, point_kinds, strict=True) if k not in PACKABLE]
            points = [p for p, k in zip(points, point_kinds, strict=True) if k in PACKABLE]
            kinds = [k for k in point_kinds if k in PACKABLE]
            trials = len(points)
    solo_kinds = [k for k in kinds if k not in PACKABLE]
    solo_asked = not points and len(solo_kinds) < len(kinds) and bool(solo_kinds)
    if solo_asked:  # a search over kinds of both sorts: members of the packable ones (about their share) packed
        kinds = [k for k in kinds if k in PACKABLE]
        trials = math.ceil(trials * len(kinds) / (len(kinds) + len(solo_kinds)))
    pack = pack_size(cfg, setting, kinds, trials, plan.max_concurrent, is_decoder(cfg.backbone), key)
    if pack == 1:
        return None
    slots = slot_count(trials, pack, plan.max_concurrent)
    beside = ""
    if solo:
        beside = f"; {len(solo)} trials run solo beside them (their methods train the backbone)"
    elif solo_asked:
        beside = f"; trials of {', '.join(solo_kinds)} run solo beside them (they train the backbone)"
    what = f"about {trials}" if solo_asked else f"{trials}"
    seats = f"up to {pack} seats (as many as save step time)" if setting == "auto" else f"{pack}"
    print(
        f"skray: {key}: {what} trials as members of {slots} slot(s) of {seats}, each slot loading the backbone "
        f"once{beside}",
        file=sys.stderr,
    )
    return Packing(start_broker(cfg, run.path, cmd.name, points), pack, slots, solo, solo_asked, setting == "auto")


def build_tuner(
    run: RunDir,
    cfg: ExperimentConfig,
    plan: RunPlan,
    cmd: Command,
    retry_errored: bool,
    verbose: bool,
    packing: Packing | None = None,
) -> tune.Tuner:
    """Tune's Tuner over ``run_trial``: restored from the run's directory, or new with the command's
    parameter space and Tune config and skray's callbacks (result.json, trackers, progress lines).
    Packed, the trials are the slots, and the broker searches and stops members (``skray.broker``)."""
    log_dir = None if verbose or storage.is_uri(run.path) else storage.join(storage.location(run.path), "logs")
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            experiment=cfg.model_dump(),
            command=cmd.name,
            cpus_per_worker=plan.cpus_per_worker,
            storage_path=run.path,
            log_dir=log_dir,
            broker=broker_name(run.path) if packing else None,
            pack=packing.pack if packing else 1,
            pack_auto=packing.auto if packing else False,
        ),
        {"CPU": 0, "memory": 1},  # a trial only waits on its workers; it must not hold their CPUs
    )
    if run.restore:
        again = "; failed trials run again from their last checkpoint" if retry_errored else ""
        print(f"skray: resuming {run.path} (same command and config); finished trials are kept{again}", file=sys.stderr)
        mark_finished(run.path, False)  # until this run reaches its end again
        return tune.Tuner.restore(
            run.path, trainable, resume_unfinished=True, resume_errored=retry_errored, restart_errored=False
        )
    per_trial = [*trackers(cfg, run.path), *([] if verbose else [progress(cfg, cmd)])]
    per_run = [TrialReports(run.path), PlacementGroupReaper()]
    callbacks = [*per_run, *([MemberCallbacks(per_trial, run.path)] if packing else per_trial)]
    if packing:  # each slot and solo point one trial, in that order, then the solo members asked for
        space, solo_beside = {}, bool(packing.solo) or packing.solo_asked
        asks = broker_name(run.path) if packing.solo_asked else None
        tune_config = tune.TuneConfig(
            search_alg=Lanes(packing.trials, asks),
            scheduler=MemberJudge(asks) if asks else None,
            num_samples=len(packing.trials) + (cmd.trials(cfg) if asks else 0),
            max_concurrent_trials=plan.max_concurrent if solo_beside else packing.slots,
            trial_dirname_creator=member_dirname,
        )
    else:
        space, tune_config = cmd.param_space(cfg), cmd.tune_config(cfg, plan.max_concurrent, run.path)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune_config,
        run_config=tune.RunConfig(
            name=run.path.rsplit("/", 1)[-1], storage_path=plan.root, verbose=1 if verbose else 0, callbacks=callbacks
        ),
    )


def mark_finished(run_dir: str, finished: bool) -> None:
    """RUN_DIR/finished holds when a run reached its end (every planned trial ended); a resumed run
    loses it until it does again. After Ctrl-C the unfinished trials read "interrupted"."""
    path = storage.join(run_dir, "finished")
    if finished:
        storage.write_text(path, time.strftime("%Y-%m-%dT%H:%M:%S"))
    elif storage.exists(path):
        storage.remove(path)


def search_or_reuse(cfg: ExperimentConfig) -> tuple[str, pd.DataFrame]:
    """A `skray tune` of ``cfg`` for a command to prepare with (compare.tune's per-method searches),
    quiet; one that finished before, with this config and no failed trial, is read back instead."""
    done = finished_run(storage.location(cfg.storage_path), cfg, "tune")
    return (done, rebuild(done)) if done else run_experiment(cfg, "tune", verbose=False)
