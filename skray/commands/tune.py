"""`skray tune`: Optuna proposes wording, prefix length and learning rate (one objective or a Pareto
front of several); ASHA stops weak trials, and Optuna is told they were pruned."""

from __future__ import annotations

from typing import Any

import pandas as pd
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.schedulers.async_hyperband import _Bracket

from skray.commands.base import Command, SubSearch
from skray.config import ExperimentConfig, method_variant, selection_metric

# What a search chooses the head among when the config names none (``searched_heads``): the frozen
# verbalizer, a fresh linear head, and word_linear (the verbalizer's rows, trained; calibrated by default).
SEARCHED_HEADS = ("verbalizer", "linear", "word_linear")


class Tune(Command):
    name = "tune"
    help = "an Optuna search with ASHA early stopping"
    section = "search"
    needs = "a search section (wordings, prefix_length, lr)"
    files = (
        "results.csv/.parquet, optuna.journal (the study), accuracy_vs_params.png, accuracy_vs_time.png, "
        "curves.png; with search.screen screen.csv; with several objectives pareto.csv and pareto.png"
    )

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        cfg.search.resolved_objectives(cfg.data.task, cfg.train.select_by)

    def trials(self, cfg: ExperimentConfig) -> int:
        return cfg.search.num_trials

    def param_space(self, cfg: ExperimentConfig) -> dict[str, Any]:
        return {}  # the searcher's Space: each trial's params.json holds what it suggested

    def prepare(self, cfg: ExperimentConfig, run_dir: str, cpus: float, search: SubSearch) -> ExperimentConfig:
        """The head searched where the config names none (``searched_heads``); with search.screen, the
        wordings' zero-shot screen, and only the kept ones are searched."""
        cfg = searched_heads(cfg)
        if cfg.search.screen is None:
            return cfg
        from skray.screen import run_screen

        kept = run_screen(cfg, run_dir, cpus)
        return cfg.model_copy(update={"search": cfg.search.model_copy(update={"wordings": kept, "screen": None})})

    def tune_config(self, cfg: ExperimentConfig, max_concurrent: int, run_dir: str) -> tune.TuneConfig:
        from skray.searcher import OptunaSearcher

        return tune.TuneConfig(
            metric=f"best_val_{selection_metric(cfg.data.task, cfg.train.select_by)}",
            mode="max",
            num_samples=cfg.search.num_trials,
            max_concurrent_trials=max_concurrent,
            search_alg=OptunaSearcher.from_config(cfg, run_dir),
            scheduler=asha(cfg),
        )

    def packing(self, cfg: ExperimentConfig) -> tuple[str | int, list[str]]:
        return cfg.search.pack, list(cfg.search.kinds or [cfg.method.kind])

    def trial_config(self, cfg: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
        keys = {k: params[k] for k in ("wording", "prefix_length", "adapter_rank", "head") if k in params}
        method = method_variant(cfg.method, {"kind": params["method"], **keys})
        train = cfg.train.model_copy(update={"lr": params["lr"]})
        return cfg.model_copy(update={"method": method, "train": train})

    def summarize(self, trials: pd.DataFrame, run_dir: str) -> pd.DataFrame:
        """The plots; the screen's correlation line; pareto.csv and pareto.png (with the front's
        hypervolume on the console) for several objectives."""
        from skray.pareto import hypervolume, reference_point, write_pareto
        from skray.plots import plot_tune
        from skray.results import experiment, load_curves
        from skray.screen import screen_correlation

        cfg = ExperimentConfig.model_validate(experiment(run_dir)["config"])
        objectives = cfg.search.resolved_objectives(cfg.data.task, cfg.train.select_by)
        key = selection_metric(cfg.data.task, cfg.train.select_by)
        if len(trials):
            plot_tune(trials, load_curves(run_dir, key), run_dir, key)
        line = screen_correlation(trials, run_dir, key)
        if line:
            print(f"skray: {line}")
        for line in edge_lines(trials, cfg):
            print(f"skray: {line}")
        if len(objectives) > 1 and len(trials):
            front = write_pareto(trials, objectives, run_dir)
            if len(front):
                volume = hypervolume(front, objectives, reference_point(trials, objectives))
                names = ", ".join(f"{m} ({d})" for m, d in objectives)
                print(f"skray: Pareto front of {names}: {len(front)} trials, hypervolume {volume:.4g}")
        return trials


def edge_lines(trials: pd.DataFrame, cfg: ExperimentConfig) -> list[str]:
    """A line per searched number at which the best trial sits near an end of its range (``Space.at_edges``):
    a search cannot say what lies beyond, so the range may have capped the best."""
    from skray.results import best_trial
    from skray.searcher import Space

    best = best_trial(trials) if len(trials) else None
    if best is None:
        return []
    return [
        f"the best trial's {name} ({best[name]:.3g}) is near the {end} of the range searched ({low:.3g} - "
        f"{high:.3g}): the best setting may lie beyond it"
        for name, end, (low, high) in Space.from_config(cfg).at_edges(best.to_dict())
    ]


def searched_heads(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with ``search.heads`` set to ``SEARCHED_HEADS`` where the config names no head (neither
    method.head nor search.heads): no head won on every task measured (docs/RESULTS.md, "Heads on three
    tasks"), and packed trials make the choice cheap to search. Only where each of them applies: a
    decoder's classification, a kind with a head to choose, a sampler that is not a planned grid."""
    if cfg.search.heads is not None or "head" in cfg.method.model_fields_set or not head_searchable(cfg):
        return cfg
    return cfg.model_copy(update={"search": cfg.search.model_copy(update={"heads": list(SEARCHED_HEADS)})})


def head_searchable(cfg: ExperimentConfig) -> bool:
    """Whether a search over ``cfg`` could choose the head: a decoder's classification, a kind with a
    head to choose (not only the linear probe), a sampler that is not a planned grid."""
    from skray.backbones import is_decoder

    s = cfg.search
    if s.sampler == "grid" or cfg.data.task != "classification":
        return False
    if set(s.kinds or [cfg.method.kind]) == {"linear_probe"}:
        return False
    return is_decoder(cfg.backbone)


def asha(cfg: ExperimentConfig) -> ASHAScheduler:
    """ASHA over training steps, not reports: after a resume (Tuner.restore) a trial's
    ``training_iteration`` starts again at 1 while its training goes on from its checkpoint, so
    only the step makes rungs compare equal amounts of training. Rungs sit at evaluations:
    ``grace_period`` evaluations, then x ``reduction_factor``. A trial is compared with the trials of
    its own kind and head (``StepASHA``)."""
    s, t = cfg.search, cfg.train
    grace = min(s.grace_period * t.eval_every, t.max_steps)
    return StepASHA(time_attr="step", max_t=t.max_steps, grace_period=grace, reduction_factor=s.reduction_factor)


class StepASHA(ASHAScheduler):
    """ASHA that compares like with like and decides once per report.

    Rungs per family: a trial is judged against trials of its own method kind and head only. Heads
    and kinds learn at different paces: a fresh linear head starts at chance and overtakes the
    verbalizer after the first rung on the tweets (docs/RESULTS.md), so one set of rungs stopped every
    linear trial of the default head search at its first rung.

    Once per report: when a report passes several rungs the trial has no record at, it decides at the
    highest and marks the lower ones passed (NaN, which cutoffs ignore). Stock ASHA decides at the
    highest and leaves the lower ones for the trial's next reports, so a trial whose rung records were
    lost (the scheduler's saved state predates them when a killed driver is resumed) was stopped
    between rungs, by a rung it had passed before the kill."""

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        config = getattr(trial, "config", None) or {}
        if "method" not in config:
            return  # not a search's trial (the scheduler's own tests): one family
        families = self.__dict__.setdefault("_families", {})  # a scheduler pickled before families had none
        family = f"{config['method']}/{config.get('head', '')}"
        if family not in families:
            grace = min(rung for rung, _ in self._brackets[0]._rungs)
            families[family] = _Bracket(grace, self._max_t, self._reduction_factor, 0, self._stop_last_trials)
        self._trial_info[trial.trial_id] = families[family]

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        bracket = self._trial_info.get(trial.trial_id)
        step = result.get(self._time_attr)
        if bracket is not None and step is not None and self._metric in result:
            reached = [recorded for rung, recorded in bracket._rungs if rung <= step and trial.trial_id not in recorded]
            for recorded in reached[1:]:  # rungs are listed highest first
                recorded[trial.trial_id] = float("nan")
        return super().on_trial_result(tune_controller, trial, result)
