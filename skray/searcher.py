"""Optuna's ask-and-tell behind Ray Tune's ``Searcher``: what ``skray tune`` samples trials with.

Ray's own OptunaSearch tells Optuna that a trial ASHA stopped is COMPLETE with the scores it had
when stopped (so the sampler learns that a setting is bad when it was only cut short), drops the
intermediate values of multi-objective studies, and leaves TPE's 10 random start-up trials, the
whole of a 4-12 trial search. Here a stopped trial is PRUNED (its curve, for one objective, is in
its intermediate values), only a trial that reached its final report is COMPLETE, the start-up is
sized to the search, and the study lives in a journal file that optuna-dashboard opens and that
a resumed run (``Tuner.restore``) goes on with.

Reproducibility: the samplers are seeded, so with ``max_concurrent_trials: 1`` the same seed,
space and results give the same trials. With trials side by side, what the sampler has seen at
each ``suggest`` depends on which trials finished first, so only the start-up (random) trials are
the same from run to run; TPE's constant liar keeps concurrent suggestions apart.
"""

from __future__ import annotations

import math
import numbers
import pickle
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from skray import storage
from skray.config import ExperimentConfig

SAMPLERS = ("tpe", "gp", "random", "nsga2", "grid")
# The trial states each model-based sampler learns from: its start-up ends when this many reach startup.
MODEL_STATES = {
    "tpe": (TrialState.COMPLETE, TrialState.PRUNED),
    "gp": (TrialState.COMPLETE,),
    "nsga2": (TrialState.COMPLETE,),
}
# Which method kinds read a parameter (skray.methods): a kind that ignores one is not given it.
READS = {
    "wording": frozenset({"sk_prefix", "sk_prompt", "prompt_tuning_text"}),
    "prefix_length": frozenset(
        {"sk_prefix", "sk_prompt", "prompt_tuning", "prompt_tuning_text", "prefix_tuning", "p_tuning"}
    ),
    "adapter_rank": frozenset({"sk_prefix", "sk_prompt", "lora"}),
}


def edge(value: Any, low: float, high: float, log: bool, margin: float = 0.1) -> str | None:
    """Which end of [low, high] ``value`` lies within ``margin`` of, "bottom" or "top" (on a log scale if
    ``log``), else None (also for a value that is not a number: a parameter a kind does not read)."""
    if not isinstance(value, numbers.Real) or math.isnan(value) or low == high:
        return None
    scale = math.log if log else float
    where = (scale(value) - scale(low)) / (scale(high) - scale(low))
    return "bottom" if where <= margin else "top" if where >= 1 - margin else None


@dataclass(frozen=True)
class Space:
    """What a trial varies, sampled define-by-run so that a parameter exists only where it means
    something: the wording for kinds that read one, the prefix length for kinds with virtual
    positions, the rank for SK adapters and LoRA, the head for every kind but ``linear_probe``
    (always linear). One kind (or head) is fixed, not searched; ``adapter_rank`` None is not searched."""

    wordings: tuple[str, ...]
    prefix_length: tuple[int, int]  # both ends included
    lr: tuple[float, float]  # log-uniform
    kinds: tuple[str, ...] = ("sk_prefix",)
    adapter_rank: tuple[int, int] | None = None  # log-uniform integers
    heads: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, wordings: Sequence[str] | None = None) -> Space:
        """The space ``cfg.search`` describes (``wordings``: those a screen kept, if it ran)."""
        s = cfg.search
        return cls(
            wordings=tuple(wordings or s.wordings),
            prefix_length=(s.prefix_length.low, s.prefix_length.high),
            lr=(s.lr.low, s.lr.high),
            kinds=tuple(s.kinds or [cfg.method.kind]),
            adapter_rank=(s.adapter_rank.low, s.adapter_rank.high) if s.adapter_rank else None,
            heads=tuple(s.heads or []),
        )

    def sample(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        """The trial's config for Ray: ``method`` always, the parameters its kind reads, ``lr``."""
        kind = trial.suggest_categorical("method", self.kinds) if len(self.kinds) > 1 else self.kinds[0]
        config: dict[str, Any] = {"method": kind}
        if kind in READS["wording"]:
            config["wording"] = trial.suggest_categorical("wording", self.wordings)
        if kind in READS["prefix_length"]:
            config["prefix_length"] = trial.suggest_int("prefix_length", *self.prefix_length)
        if self.adapter_rank and kind in READS["adapter_rank"]:
            config["adapter_rank"] = trial.suggest_int("adapter_rank", *self.adapter_rank, log=True)
        if len(self.heads) > 1 and kind != "linear_probe":
            config["head"] = trial.suggest_categorical("head", self.heads)
        config["lr"] = trial.suggest_float("lr", *self.lr, log=True)
        return config

    def spread(self, i: int, n: int, seed: int) -> dict[str, Any]:
        """Start-up trial ``i`` of ``n`` spread over the numeric ranges (a Latin hypercube): the
        learning rate at quantile (i + 1/2) / n of its log range, m and the rank at the same
        quantiles in an order shuffled by ``seed``, so each range is covered evenly and the ranges
        do not move together. Choices (wording, kind, head) are left to the sampler."""
        order = np.random.default_rng(seed)
        m_at, rank_at = order.permutation(n), order.permutation(n)

        def at(q: float, low: float, high: float, log: bool) -> float:
            if log:
                return math.exp(math.log(low) + q * (math.log(high) - math.log(low)))
            return low + q * (high - low)

        quantile = [(j + 0.5) / n for j in range(n)]
        low, high = self.prefix_length
        point: dict[str, Any] = {
            "lr": at(quantile[i], *self.lr, log=True),
            "prefix_length": min(high, low + int(quantile[m_at[i]] * (high - low + 1))),
        }
        if self.adapter_rank:
            point["adapter_rank"] = round(at(quantile[rank_at[i]], *self.adapter_rank, log=True))
        return point

    def at_edges(self, params: Mapping[str, Any]) -> list[tuple[str, str, tuple]]:
        """The searched numbers in ``params`` that lie at an end of their range (``edge``; log scale for
        lr and the rank, as they are sampled): (name, "bottom" or "top", the range). Where a search's
        best trial sits there, the range may have capped it."""
        ranges = {"lr": (self.lr, True), "prefix_length": (self.prefix_length, False)}
        if self.adapter_rank:
            ranges["adapter_rank"] = (self.adapter_rank, True)
        ends = {name: (edge(params.get(name), *bounds, log), bounds) for name, (bounds, log) in ranges.items()}
        return [(name, end, bounds) for name, (end, bounds) in ends.items() if end]

    def covering(self, i: int) -> dict[str, Any]:
        """Trial ``i``'s kind and head where the first trials take each searched kind and each searched
        head once, in order: a short search (a random start-up, 4 trials) could otherwise never try the
        one that suits the task."""
        fixed: dict[str, Any] = {}
        if len(self.kinds) > 1 and i < len(self.kinds):
            fixed["method"] = self.kinds[i]
        if len(self.heads) > 1 and i < len(self.heads):
            fixed["head"] = self.heads[i]
        return fixed

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's points: every choice, and the low, middle and high of each range
        (geometric middle for log ranges); SearchConfig's check of num_trials counts the same."""
        low, high = self.prefix_length
        points: dict[str, list[Any]] = {
            "wording": list(self.wordings),
            "prefix_length": sorted({low, (low + high) // 2, high}),
            "lr": [self.lr[0], math.sqrt(self.lr[0] * self.lr[1]), self.lr[1]],
        }
        if len(self.kinds) > 1:
            points["method"] = list(self.kinds)
        if self.adapter_rank:
            low, high = self.adapter_rank
            points["adapter_rank"] = sorted({low, round(math.sqrt(low * high)), high})
        if len(self.heads) > 1:
            points["head"] = list(self.heads)
        return points


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its ``study.stop()`` once the grid is used up: that works only
    inside ``study.optimize`` (in ask-and-tell it raises from ``tell``); Ray stops at num_trials."""

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        pass


def make_sampler(name: str, seed: int, startup: int, space: Space) -> optuna.samplers.BaseSampler:
    """Optuna's sampler ``name``, seeded; ``startup`` is TPE's and GP's random start-up and NSGA-II's
    population (at least 2)."""
    samplers = optuna.samplers
    if name == "tpe":
        return samplers.TPESampler(seed=seed, n_startup_trials=startup)
    if name == "gp":
        return samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if name == "nsga2":
        return samplers.NSGAIISampler(seed=seed, population_size=max(2, startup))
    if name == "random":
        return samplers.RandomSampler(seed=seed)
    if name == "grid":
        return _GridSampler(space.grid(), seed=seed)
    raise ValueError(f"unknown sampler {name!r}; one of: {', '.join(SAMPLERS)}")


def study_path(run_dir: str) -> str:
    """Where a run's study lives: ``optuna.journal`` in the run dir, or, for a run dir behind a URI
    (s3://, gs://), the same name under ~/.cache/skray/optuna/<run>/ on the driver, since a journal
    is a local file with a lock; the searcher's checkpoint in the run dir carries it elsewhere."""
    if storage.is_uri(run_dir):
        return str(
            Path("~/.cache/skray/optuna").expanduser() / run_dir.rstrip("/").rsplit("/", 1)[-1] / "optuna.journal"
        )
    return storage.join(storage.location(run_dir), "optuna.journal")


def finished(result: dict[str, Any]) -> bool:
    """Whether a trial's last result is skray's final report. Ray also marks ``done`` on the result
    ASHA stopped a trial at, so the test scores (only the final report has them) decide, as in
    ``skray.results``."""
    return bool(result.get("done")) and "test_acc" in result


class OptunaSearcher(Searcher):
    """Ray Tune asks for a trial (``suggest``), and reports its results; this asks Optuna and tells
    it: COMPLETE with the objectives' final values, PRUNED when ASHA stopped the trial, FAIL on an
    error (a failed trial run again, ``--retry-errored``, goes on as a copy: ``_rerun``). With one
    objective every evaluation is an intermediate value (what TPE ranks pruned trials by); several
    objectives take none, so a pruned trial keeps its last values as user attributes
    (``last_<metric>``, ``last_step``), for the dashboard.

    ``storage``: a journal file (created with its folder; reopened if it exists), or None for a
    study in memory that cannot be restored. Ray's ``metric``/``mode`` are ``objectives``' own.
    """

    def __init__(
        self,
        space: Space,
        objectives: Sequence[tuple[str, str]],
        sampler: str = "tpe",
        seed: int = 0,
        startup_trials: int = 2,
        storage: str | Path | None = None,
        study_name: str = "skray",
        spread: bool = False,
    ) -> None:
        if not objectives or any(mode not in ("max", "min") for _, mode in objectives):
            raise ValueError(f"objectives: one or more (metric, 'max' | 'min') pairs, got {objectives!r}")
        names, modes = [m for m, _ in objectives], [d for _, d in objectives]
        super().__init__(
            metric=names[0] if len(names) == 1 else names,
            mode=modes[0] if len(modes) == 1 else modes,
        )
        self._space = space
        self._objectives = [(m, d) for m, d in objectives]
        self._sampler_name = sampler
        self._seed = seed
        self._startup = startup_trials if sampler != "nsga2" else max(2, startup_trials)
        self._spread = spread and sampler in ("tpe", "gp")
        self._sampler = make_sampler(sampler, seed, startup_trials, space)
        self._path = str(storage) if storage is not None else None
        self._study_name = study_name
        self._numbers: dict[str, int] = {}  # Ray trial id -> Optuna trial number, for every trial asked
        self._reported: dict[str, int] = {}  # the last step reported as an intermediate value
        self._announced = sampler not in MODEL_STATES
        self._study: optuna.Study | None = None  # opened on first use, and again after unpickling
        self._storage: optuna.storages.BaseStorage | None = None
        self._live: dict[str, optuna.trial.Trial] = {}

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, run_dir: str, wordings: Sequence[str] | None = None) -> OptunaSearcher:
        """The searcher ``cfg.search`` describes, its study in ``study_path(run_dir)`` named after the
        run; ``wordings``: those a screen kept, if it ran."""
        s = cfg.search
        return cls(
            Space.from_config(cfg, wordings),
            s.resolved_objectives(cfg.data.task, cfg.train.select_by),
            sampler=s.sampler,
            seed=s.seed,
            startup_trials=s.startup,
            storage=study_path(run_dir),
            study_name=run_dir.rstrip("/").rsplit("/", 1)[-1],
            spread=s.startup_points == "spread",
        )

    def __getstate__(self) -> dict[str, Any]:
        """Ray pickles the searcher with the Tuner: the study reopens from its storage instead."""
        return {**self.__dict__, "_study": None, "_storage": None, "_live": {}}

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = self._open()
        return self._study

    def _open(self) -> optuna.Study:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # skray prints its own table
        if self._path is None:
            self._storage = optuna.storages.InMemoryStorage()
        else:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            self._storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(self._path))
        directions = ["maximize" if mode == "max" else "minimize" for _, mode in self._objectives]
        study = optuna.create_study(
            storage=self._storage,
            study_name=self._study_name,
            sampler=self._sampler,
            directions=directions,
            load_if_exists=True,
        )
        if [d.name.lower() for d in study.directions] != directions:
            raise ValueError(
                f"{self._path}: study {self._study_name!r} optimises {study.directions}, not {directions}; "
                "start a new run (or study name)"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([m for m, _ in self._objectives])
        return study

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """Tune's metric (what ASHA stops by) must be one of the objectives, in the same direction.
        Returns False: the space is ``Space``'s, never one from Tune's param_space (Tune then refuses
        a param_space with search domains in it)."""
        wanted = dict(self._objectives)
        if metric is not None and (metric not in wanted or mode not in (None, wanted[metric])):
            raise ValueError(f"Tune's metric {metric!r} ({mode}) is not one of the objectives {self._objectives}")
        return False

    def suggest(self, trial_id: str) -> dict[str, Any]:
        self._announce_model()
        # A rerun's copy (``_rerun``) took no start-up point of its own.
        asked = sum("retry_of" not in t.user_attrs for t in self.study.get_trials(deepcopy=False))
        fixed = self._space.spread(asked, self._startup, self._seed) if self._spread and asked < self._startup else {}
        if self._sampler_name != "grid":
            fixed |= self._space.covering(asked)
        if fixed:  # values the trial's suggest_* calls return
            self.study.enqueue_trial(fixed)
        trial = self.study.ask()
        trial.set_user_attr("trial", trial_id)  # the results table's trial column, for the dashboard
        self._live[trial_id] = trial
        self._numbers[trial_id] = trial.number
        return self._space.sample(trial)

    def _announce_model(self) -> None:
        """One line when the sampler leaves its random start-up: from here on it models results."""
        if self._announced:
            return
        seen = len(self.study.get_trials(deepcopy=False, states=MODEL_STATES[self._sampler_name]))
        if seen >= self._startup:
            self._announced = True
            print(
                f"skray: optuna {self._sampler_name}: {seen} trials finished, the "
                f"{'spread' if self._spread else 'random'} start-up is over; "
                "from here on trials are sampled from a model of their results",
                file=sys.stderr,
            )

    def adopt(self, trial_id: str) -> bool:
        """Map ``trial_id`` again to the running Optuna trial asked for it before (a packed run's member
        that a killed driver left running: ``skray.broker``); False if the study has none."""
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.user_attrs.get("trial") == trial_id:
                self._numbers[trial_id] = trial.number
                return True
        return False

    def fail_running(self, keep: set[str]) -> None:
        """Tell FAIL every trial the study holds as running, but those of the Ray trial ids in ``keep``."""
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.user_attrs.get("trial") not in keep:
                self.study.tell(trial.number, state=TrialState.FAIL)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        trial = self._trial(trial_id)
        if trial is not None and len(self._objectives) == 1:
            self._report(trial_id, trial, result)

    def _report(self, trial_id: str, trial: optuna.trial.Trial, result: dict) -> None:
        """One intermediate value per step, once: a trial restarted from its checkpoint reports
        steps after the one it restarted from; a step already reported is skipped."""
        step, value = result.get("step"), result.get(self._objectives[0][0])
        if not _is_number(step) or not _is_number(value) or step <= self._reported.get(trial_id, -1):
            return
        trial.report(float(value), int(step))
        self._reported[trial_id] = int(step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self._trial(trial_id, rerun=bool(result) and not error)
        if trial is None:
            return  # not asked here, or told already
        values = None
        if error or not result:
            state = TrialState.FAIL
        elif finished(result):
            values = [result.get(metric) for metric, _ in self._objectives]
            state = TrialState.COMPLETE
            missing = [m for (m, _), v in zip(self._objectives, values, strict=True) if not _is_number(v)]
            if missing:
                print(
                    f"skray: trial {trial_id} ended without a value of {missing[0]}; Optuna records it as failed",
                    file=sys.stderr,
                )
                state, values = TrialState.FAIL, None
        else:  # ASHA stopped it: the result Ray stopped it at never came through on_trial_result
            state = TrialState.PRUNED
            if len(self._objectives) == 1:
                self._report(trial_id, trial, result)
            else:
                for name, value in [("step", result.get("step")), *((m, result.get(m)) for m, _ in self._objectives)]:
                    trial.set_user_attr(f"last_{name}", float(value) if _is_number(value) else None)
        self.study.tell(trial, values, state=state)
        self._live.pop(trial_id, None)
        self._reported.pop(trial_id, None)

    def _trial(self, trial_id: str, rerun: bool = True) -> optuna.trial.Trial | None:
        """The Optuna trial of a Ray trial that is still running; rebuilt from the storage after a
        restore, None once it was told (or if it was never asked here). A trial told FAIL that runs
        again (``--retry-errored``; ``rerun``: this notice is a result, not another failure) gets
        a new running trial, see ``_rerun``."""
        if trial_id in self._live:
            return self._live[trial_id]
        number = self._numbers.get(trial_id)
        if number is None:
            return None
        told = self.study.get_trials(deepcopy=False)[number]
        if told.state == TrialState.FAIL and rerun:
            number = self._rerun(trial_id, told)
        elif told.state != TrialState.RUNNING:
            return None
        study_id = self._storage.get_study_id_from_name(self._study_name)
        own_id = self._storage.get_trial_id_from_study_id_trial_number(study_id, number)
        self._live[trial_id] = optuna.trial.Trial(self.study, own_id)
        return self._live[trial_id]

    def _rerun(self, trial_id: str, failed: optuna.trial.FrozenTrial) -> int:
        """The number of a new running trial for a Ray trial Optuna holds as FAIL but that runs again.

        Optuna cannot reopen a finished trial, so the rerun is a copy with the same parameters and the
        intermediate values it had (``retry_of``: the failed one's number); this Ray trial maps to it
        from here on, so its final values reach the study (and TPE) and the journal agrees with the
        results table. Steps reported before the failure are not reported again."""
        copy = optuna.trial.create_trial(
            state=TrialState.RUNNING,
            params=failed.params,
            distributions=failed.distributions,
            user_attrs=failed.user_attrs | {"retry_of": failed.number},
            system_attrs=failed.system_attrs,
            intermediate_values=failed.intermediate_values,
        )
        study_id = self._storage.get_study_id_from_name(self._study_name)
        number = self._storage.get_trial_number_from_id(self._storage.create_new_trial(study_id, copy))
        self._numbers[trial_id] = number
        if failed.intermediate_values:
            self._reported[trial_id] = max(failed.intermediate_values)
        return number

    def _settings(self) -> dict[str, Any]:
        return {
            "space": self._space,
            "objectives": self._objectives,
            "sampler": self._sampler_name,
            "seed": self._seed,
            "startup": self._startup,
            "spread": self._spread,
            "study_name": self._study_name,
        }

    def save(self, checkpoint_path: str) -> None:
        """What the study does not hold: which Ray trial is which Optuna trial, the sampler (its
        random state goes on rather than repeating the seed's first draws), and the journal itself,
        so a run whose driver moved (a run dir on s3://) gets its study back."""
        journal = Path(self._path).read_bytes() if self._path and Path(self._path).exists() else None
        state = {
            "settings": self._settings(),
            "numbers": self._numbers,
            "reported": self._reported,
            "announced": self._announced,
            "sampler": self._sampler,
            "journal": journal,
        }
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        """Go on from ``save``: the study reopens from its journal (rewritten from the checkpoint if
        the file is gone); trials it holds as running that no Ray trial will finish become FAIL."""
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        if state["settings"] != self._settings():
            raise ValueError(f"{checkpoint_path}: saved by a different search ({state['settings']})")
        if self._path is None:
            raise ValueError("a study in memory cannot be restored; give OptunaSearcher a storage path")
        if state["journal"] is not None and not Path(self._path).exists():
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            Path(self._path).write_bytes(state["journal"])
        self._numbers, self._reported, self._announced = state["numbers"], state["reported"], state["announced"]
        self._sampler = state["sampler"]
        self._study, self._live = None, {}
        asked = set(self._numbers.values())
        for orphan in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if orphan.number not in asked:
                self.study.tell(orphan.number, state=TrialState.FAIL)


def _is_number(value: Any) -> bool:
    """A finite number (numpy's too), not a bool, None or NaN."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
