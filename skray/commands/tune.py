"""`skray tune`: Optuna proposes wording, prefix length and learning rate; ASHA stops weak trials."""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler

from skray.commands.base import Command
from skray.config import ExperimentConfig, selection_metric


class Tune(Command):
    name = "tune"
    help = "an Optuna search with ASHA early stopping"
    section = "search"
    needs = "a search section (wordings, prefix_length, lr)"

    def trials(self, cfg: ExperimentConfig) -> int:
        return cfg.search.num_trials

    def param_space(self, cfg: ExperimentConfig) -> dict[str, Any]:
        s = cfg.search
        return {
            "method": cfg.method.kind,
            "wording": tune.choice(s.wordings),
            "prefix_length": tune.randint(s.prefix_length.low, s.prefix_length.high + 1),
            "lr": tune.loguniform(s.lr.low, s.lr.high),
        }

    def tune_config(self, cfg: ExperimentConfig, max_concurrent: int) -> tune.TuneConfig:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return tune.TuneConfig(
            metric=f"best_val_{selection_metric(cfg.data.task)}",
            mode="max",
            num_samples=cfg.search.num_trials,
            max_concurrent_trials=max_concurrent,
            search_alg=OptunaSearch(sampler=optuna.samplers.TPESampler(seed=cfg.search.seed)),
            scheduler=asha(cfg),
        )

    def trial_config(self, cfg: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
        method = cfg.method.model_copy(update={"wording": params["wording"], "prefix_length": params["prefix_length"]})
        train = cfg.train.model_copy(update={"lr": params["lr"]})
        return cfg.model_copy(update={"method": method, "train": train})


def asha(cfg: ExperimentConfig) -> ASHAScheduler:
    """ASHA over training steps, not reports: after a resume (Tuner.restore) a trial's
    ``training_iteration`` starts again at 1 while its training goes on from its checkpoint, so
    only the step makes rungs compare equal amounts of training. Rungs sit at evaluations:
    ``grace_period`` evaluations, then x ``reduction_factor``."""
    s, t = cfg.search, cfg.train
    grace = min(s.grace_period * t.eval_every, t.max_steps)
    return ASHAScheduler(time_attr="step", max_t=t.max_steps, grace_period=grace, reduction_factor=s.reduction_factor)
