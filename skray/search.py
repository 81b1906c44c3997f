"""Ray Tune over Ray Train: every trial is a TorchTrainer; the command says what the trials are.

``tune``: Optuna proposes, ASHA stops early. ``train``: one fixed trial. ``compare``: a grid of
methods x seeds. ``scale``: a grid of workers x ZeRO settings, one point at a time. All write one
results format that ``skray.results`` reads. Running the same command on the same config again
resumes a run that did not reach its end (finished trials stay as they are).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass

import pandas as pd
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from skray import scale, storage
from skray.cluster import connect
from skray.compare import variants
from skray.config import ExperimentConfig, resolve_device, selection_metric
from skray.errors import ConfigError, ResourceError
from skray.report import rebuild
from skray.results import experiment

COMMANDS = ("train", "tune", "compare", "scale")
NEEDS = {  # the config section each command reads besides the defaults
    "tune": ("search", "a search section (wordings, prefix_length, lr)"),
    "compare": ("compare", "a compare section (methods, seeds)"),
    "scale": ("scale", "a scale section (num_workers, zero_stages, offloads, micro_batch_sizes)"),
}


@dataclass
class Plan:
    cpus_per_worker: float
    max_concurrent: int


def plan_resources(
    cfg: ExperimentConfig, cluster: dict[str, float], can_grow: bool = False, command: str = "train"
) -> Plan:
    """Per-worker CPUs and trial concurrency that fit the cluster, or a clear error at once.

    Ray's default (1 CPU per worker plus 1 per trial) deadlocks a 2-CPU machine: trials take the
    CPUs their workers then wait for. Trials here reserve nothing; workers get a share that fits.
    A cluster that can grow (autoscaling GPU nodes from zero) is not held to what it has now:
    workers ask for 1 CPU (or train.cpus_per_worker) and wait for the autoscaler. A scaling grid
    is sized for its largest point and runs one point at a time, each worker with the same CPUs.
    """
    t = cfg.train
    workers = max(cfg.scale.num_workers) if command == "scale" else t.num_workers
    key = "scale.num_workers" if command == "scale" else "train.num_workers"
    cpus = cluster.get("CPU", 0.0)
    if can_grow:
        per_worker = t.cpus_per_worker or 1.0
    else:
        if t.use_gpu is True and cluster.get("GPU", 0.0) < workers:
            raise ResourceError(
                f"{key}={workers} GPU workers, but the Ray cluster has {cluster.get('GPU', 0):g} GPUs; "
                f"lower {key} or set train.use_gpu false"
            )
        per_worker = t.cpus_per_worker or min(1.0, cpus / workers)
        if per_worker <= 0 or workers * per_worker > cpus + 1e-9:
            raise ResourceError(
                f"{key}={workers} x train.cpus_per_worker={per_worker:g} needs {workers * per_worker:g} CPUs "
                f"but the Ray cluster has {cpus:g}; lower them or add nodes"
            )
    if command == "scale":
        return Plan(per_worker, 1)
    concurrent = max(1, math.floor(cpus / (workers * per_worker) + 1e-9))
    limit = cfg.search.max_concurrent_trials if cfg.search else None
    if limit:  # a growing cluster may run more trials than fit now; a fixed one may not
        concurrent = limit if can_grow else min(concurrent, limit)
    return Plan(per_worker, concurrent)


def with_params(cfg: ExperimentConfig, params: dict, command: str) -> ExperimentConfig:
    """The experiment a trial runs: sampled wording, prefix length and lr (tune), one method
    variant and seed (compare), or one grid point (scale)."""
    if command == "compare":
        method, lr = variants(cfg)[params["method"]]
        train = cfg.train.model_copy(update={"seed": params["seed"], "lr": lr})
    elif command == "scale":
        method, train = cfg.method, cfg.train.model_copy(update=params["point"])
    else:
        method = cfg.method.model_copy(update={k: params[k] for k in ("wording", "prefix_length") if k in params})
        train = cfg.train.model_copy(update={"lr": params["lr"]} if "lr" in params else {})
    return cfg.model_copy(update={"method": method, "train": train})


def run_trial(params: dict, experiment: dict, command: str, cpus_per_worker: float, storage_path: str) -> None:
    """A Tune trial: build a TorchTrainer for the trial's config; workers report through Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from skray.train.launch import build_trainer

    cfg = with_params(ExperimentConfig.model_validate(experiment), params, command)
    name = f"train_{tune.get_context().get_trial_id()}"
    build_trainer(cfg, cpus_per_worker, storage_path, name, callbacks=[TuneReportCallback()]).fit()


def _param_space(cfg: ExperimentConfig, command: str) -> dict:
    if command == "compare":
        return {"method": tune.grid_search(list(variants(cfg))), "seed": tune.grid_search(cfg.compare.seeds)}
    if command == "scale":
        return {"point": tune.grid_search(scale.points(cfg))}
    if command == "train":
        return {
            "method": cfg.method.kind,
            "wording": cfg.method.wording,
            "prefix_length": cfg.method.prefix_length,
            "lr": cfg.train.lr,
        }
    s = cfg.search
    return {
        "method": cfg.method.kind,
        "wording": tune.choice(s.wordings),
        "prefix_length": tune.randint(s.prefix_length.low, s.prefix_length.high + 1),
        "lr": tune.loguniform(s.lr.low, s.lr.high),
    }


def _tune_config(cfg: ExperimentConfig, command: str, plan: Plan) -> tune.TuneConfig:
    if command == "train":
        return tune.TuneConfig(num_samples=1, max_concurrent_trials=1)
    if command in ("compare", "scale"):
        return tune.TuneConfig(num_samples=1, max_concurrent_trials=plan.max_concurrent)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    s = cfg.search
    metric = f"best_val_{selection_metric(cfg.data.task)}"
    return tune.TuneConfig(
        metric=metric,
        mode="max",
        num_samples=s.num_trials,
        max_concurrent_trials=plan.max_concurrent,
        search_alg=OptunaSearch(sampler=optuna.samplers.TPESampler(seed=s.seed)),
        scheduler=asha(cfg),
    )


def asha(cfg: ExperimentConfig) -> ASHAScheduler:
    """ASHA over training steps, not reports: after a resume (Tuner.restore) a trial's
    ``training_iteration`` starts again at 1 while its training goes on from its checkpoint, so
    only the step makes rungs compare equal amounts of training. Rungs sit at evaluations:
    ``grace_period`` evaluations, then x ``reduction_factor``."""
    s, t = cfg.search, cfg.train
    grace = min(s.grace_period * t.eval_every, t.max_steps)
    return ASHAScheduler(time_attr="step", max_t=t.max_steps, grace_period=grace, reduction_factor=s.reduction_factor)


def planned_trials(cfg: ExperimentConfig, command: str) -> int:
    if command == "compare":
        return len(cfg.compare.methods) * len(cfg.compare.seeds)
    if command == "scale":
        return len(scale.points(cfg))
    return cfg.search.num_trials if command == "tune" else 1


def unfinished_run(root: str, cfg: ExperimentConfig, command: str) -> str | None:
    """The newest run of this name and command, if it was started with this very config and did
    not reach its end (driver killed, Ctrl-C): running the same command again resumes it."""
    want = json.loads(json.dumps({"command": command, "config": cfg.model_dump()}))
    runs = [d for d in storage.subdirs(root) if d.rsplit("/", 1)[-1].startswith(f"{cfg.name}-{command}-")]
    if not runs or storage.exists(storage.join(runs[-1], "finished")) or experiment(runs[-1]) != want:
        return None
    return runs[-1] if tune.Tuner.can_restore(runs[-1]) else None


def run_experiment(
    cfg: ExperimentConfig, command: str = "train", address: str | None = None
) -> tuple[str, pd.DataFrame]:
    """Run one fixed trial (train), an Optuna/ASHA search (tune), a methods x seeds grid
    (compare) or a scaling grid (scale); return the run dir and the table to show.

    A run of the same name, command and config that did not finish is resumed instead: its
    finished trials are kept, the others run (Ray Train resumes each from its last checkpoint).
    """
    if command in NEEDS and getattr(cfg, NEEDS[command][0]) is None:
        section, what = NEEDS[command]
        raise ConfigError(f"{section}: missing; `skray {command}` needs {what}")
    if command == "scale" and not scale.points(cfg):
        raise ConfigError("scale: no valid point (offload 'optimizer' needs a ZeRO stage 1-3, 'all' needs stage 3)")
    from skray.preflight import preflight

    root = storage.location(cfg.storage_path)
    storage.ensure_writable(root)
    preflight(cfg)
    can_grow = connect(address)
    cluster = ray.cluster_resources()
    cfg = cfg.model_copy(update={"train": resolve_device(cfg.train, cluster.get("GPU", 0.0))})
    plan = plan_resources(cfg, cluster, can_grow, command)
    resumed = unfinished_run(root, cfg, command)
    run_dir = resumed or storage.join(root, f"{cfg.name}-{command}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not resumed:
        storage.write_text(
            storage.join(run_dir, "experiment.json"),
            json.dumps({"command": command, "config": cfg.model_dump()}, indent=2),
        )

    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            experiment=cfg.model_dump(),
            command=command,
            cpus_per_worker=plan.cpus_per_worker,
            storage_path=run_dir,
        ),
        {"CPU": 0, "memory": 1},  # a trial only waits on its workers; it must not hold their CPUs
    )
    if resumed:
        print(
            f"skray: resuming {run_dir} (same command and config, not finished); finished trials are kept",
            file=sys.stderr,
        )
        tuner = tune.Tuner.restore(
            run_dir, trainable, resume_unfinished=True, resume_errored=False, restart_errored=False
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(cfg, command),
            tune_config=_tune_config(cfg, command, plan),
            run_config=tune.RunConfig(name=run_dir.rsplit("/", 1)[-1], storage_path=root, verbose=1),
        )
    results = tuner.fit()
    planned = planned_trials(cfg, command)
    if len(results) == planned and results.num_terminated + results.num_errors == planned:
        # Only a sweep that ran to its end is marked so; after Ctrl-C unfinished trials read "interrupted".
        storage.write_text(storage.join(run_dir, "finished"), time.strftime("%Y-%m-%dT%H:%M:%S"))
    return run_dir, rebuild(run_dir)
