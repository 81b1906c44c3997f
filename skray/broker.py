"""Packed trials on the driver's side: how many members share a slot, and the broker that feeds them.

``skray tune`` (``search.pack``) and ``skray compare`` (``compare.pack``) run their trials as *members*
of a few *slots* (Tune trials, each one worker group holding the frozen backbone once:
``skray.train.packed``) wherever every method kind they train can share it. The broker is one Ray
actor, made by the driver for the run, that does for members what Tune's searcher and scheduler do
for trials: for tune, Optuna's ask and tell (``skray.searcher.OptunaSearcher``, the same study and
journal) and ASHA's rungs in training steps (``skray.commands.tune.asha``), applied per member with
the same calls Tune makes, in the same order; for compare, the grid's points in order. A slot asks
it for the next member whenever a seat is free; it answers None once every trial has been handed out.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import Searcher

from skray import storage
from skray.config import ExperimentConfig, selection_metric
from skray.errors import ConfigError

# search.pack auto's most seats per slot. Each slot keeps fewer where its measured step time says more
# save nothing (skray.train.step_curve: 1-2 on 2 CPU cores); on an H200, 16 SmolLM2 members ran 13.3x as many
# configurations an hour as one (docs/SCALING.md), and 32 were not measured.
PACK_LIMIT = 32
NAMESPACE = "skray"  # where a run's broker is named (``broker_name``), for slots and the progress lines


def broker_name(run_dir: str) -> str:
    """A run's broker, by name: a resumed run's new driver makes a new one under the same name, so slots
    and the console find whichever is alive (a handle pickled with the run would name a dead one)."""
    return f"broker-{run_dir.rstrip('/').rsplit('/', 1)[-1]}"


def start_broker(cfg: ExperimentConfig, run_dir: str, command: str, points: list[dict[str, Any]] | None) -> Any:
    """The run's broker actor, named for it; it lives as long as the driver that made it."""
    return Broker.options(name=broker_name(run_dir), namespace=NAMESPACE).remote(
        cfg.model_dump(), run_dir, command, points
    )


@dataclass(frozen=True)
class _Member:
    """What Ray's ASHA reads of a trial: its id, and what it was given (its family's rungs: StepASHA)."""

    trial_id: str
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def packing_refusal(cfg: ExperimentConfig, kinds: list[str], is_decoder: bool) -> str | None:
    """Why trials of these method kinds cannot be packed (None: they can)."""
    from skray.methods.packed import PACKABLE

    t = cfg.train
    solo = [k for k in kinds if k not in PACKABLE]
    if solo:
        return f"method kind {solo[0]} does not share a frozen backbone (packable: {', '.join(sorted(PACKABLE))})"
    if not is_decoder:
        return "packed members need a decoder backbone"
    if cfg.data.task != "classification":
        return f"data.task {cfg.data.task} is not packed yet (classification is)"
    if cfg.tracking.tensorboard and storage.is_uri(cfg.storage_path):
        return "tracking.tensorboard writes members' event files on the driver; storage_path is not a local folder"
    if t.precision == "fp16":
        return "fp16 trains with a loss scale, which packed members (trained outside DeepSpeed) do not keep; use bf16"
    if t.offload != "none" and t.zero_stage != 3:
        return "offload without ZeRO 3 moves only what trains; a packed slot's members train outside DeepSpeed"
    return None


def pack_size(
    cfg: ExperimentConfig, setting: str | int, kinds: list[str], trials: int, slots: int, is_decoder: bool, key: str
) -> int:
    """Members per slot: ``setting`` (``key``, e.g. search.pack) as set, or for ``auto`` the ``trials``
    spread over the ``slots`` that fit at once, at most ``PACK_LIMIT`` (each slot then keeps what its
    step time pays for: ``skray.train.step_curve``); 1 (solo, with one line saying why) where they
    cannot be packed, and a ConfigError where they were asked to be."""
    refusal = packing_refusal(cfg, kinds, is_decoder)
    if refusal:
        if setting != "auto" and setting > 1:
            raise ConfigError(f"{key} {setting}: {refusal}; set {key}: 1 (or auto)")
        if setting == "auto" and trials > 1:
            print(f"skray: {key} auto: trials run solo: {refusal}", file=sys.stderr)
        return 1
    if setting != "auto":
        return setting
    return max(1, min(PACK_LIMIT, math.ceil(trials / max(1, slots))))


def slot_count(trials: int, pack: int, max_concurrent: int) -> int:
    """Slots the members are spread over: as many as run at once, no more than have members to fill."""
    return max(1, min(max_concurrent, math.ceil(trials / pack)))


@ray.remote(num_cpus=0)
class Broker:
    """Hands out the run's configurations to slots, and judges each member's reports."""

    def __init__(self, experiment: dict, run_dir: str, command: str, points: list[dict[str, Any]] | None) -> None:
        from ray.tune.schedulers import FIFOScheduler

        from skray.commands.tune import asha
        from skray.searcher import OptunaSearcher

        self.experiment, self.command, self.points = experiment, command, points
        cfg = ExperimentConfig.model_validate(experiment)
        metric = f"best_val_{selection_metric(cfg.data.task, cfg.train.select_by)}"
        if points is None:  # a search: Optuna asks, ASHA stops
            self.searcher = OptunaSearcher.from_config(cfg, run_dir)
            self.searcher.set_search_properties(metric, "max", {})
            self.asha = asha(cfg)
            self.asha.set_search_properties(metric, "max")
            self.num_trials = cfg.search.num_trials
        else:  # a grid (compare): every point runs to its end
            self.searcher, self.asha, self.num_trials = None, FIFOScheduler(), len(points)
        self.key = metric
        # Member ids are unique beyond the run (a compare takes members of several searches into one table).
        self.token = hashlib.sha1(run_dir.rstrip("/").rsplit("/", 1)[-1].encode()).hexdigest()[:5]
        # member -> (its slot; None for one running solo, as a Tune trial of its own; what it was handed)
        self.live: dict[str, tuple[int | None, tuple]] = {}
        self.log: list[tuple[str, str, dict | None]] = []  # (start | result | end | error, member, payload)
        self.pending: list[tuple] = []  # members a killed driver left running in slots: handed out again first
        self.waiting: dict[str, list[tuple]] = {"slot": [], "solo": []}  # asked of Optuna for the other lane
        self.asked = self._resume(run_dir)

    def _resume(self, run_dir: str) -> int:
        """Members a run made before its driver was killed (their folders): the ones that ended stay as
        they are (and Optuna is told of an end it missed); the ones still running go on under the same
        Optuna trial, from their last report's state (``skray.train.packed``'s resume.pt; from step 0
        where they had none). ASHA hears every member's logged reports again, so its rungs hold what
        they held. Returns how many members were handed out before."""
        from skray import storage
        from skray.search import trial_experiment

        made = [d for d in storage.subdirs(run_dir) if _member_of(d)]
        for directory in made:
            member, reports = _member_of(directory), storage.read_reports(storage.join(directory, "result.json"))
            params_path = storage.join(directory, "params.json")
            params = json.loads(storage.read_text(params_path)) if storage.exists(params_path) else {}
            failed = storage.exists(storage.join(directory, "error.txt"))
            ended = failed or bool(reports) and reports[-1].get("done", False)
            if ended and self.searcher is not None and self.searcher.adopt(member):
                # the slot writes a member's end, then tells the broker: the driver died in between
                self.searcher.on_trial_complete(member, None if failed else reports[-1], error=failed)
            if failed:
                continue
            self.asha.on_trial_add(None, _Member(member, params))
            for report in reports:  # the decisions were taken when they were made
                self.asha.on_trial_result(None, _Member(member), report)
            running = not ended and bool(params)
            if running and "member" in params:  # a solo member: Tune restores its trial, which goes on
                if self.searcher is None or self.searcher.adopt(member):
                    self.live[member] = (None, (member, params, None))
            elif running and (self.searcher is None or self.searcher.adopt(member)):
                params = {k: v for k, v in params.items() if k != "slot"}
                cfg = trial_experiment(self.command, self.experiment, params)
                self.pending.append((member, params, cfg.model_dump()))
            elif reports:
                self.asha.on_trial_complete(None, _Member(member), reports[-1])
            else:
                self.asha.on_trial_remove(None, _Member(member))
        if self.searcher is not None:  # asked for a member whose folder was never made: it will not run
            self.searcher.fail_running(keep={member for member, _, _ in self.pending} | set(self.live))
        return len(made)

    def ask(self, slot: int) -> tuple[str, dict[str, Any], dict] | None:
        """The next member for ``slot``: its id, what Optuna sampled (its params.json) and the experiment
        it runs; None once ``search.num_trials`` members were handed out. Optuna's picks of a kind that
        trains the backbone wait for ``solo``, and Optuna is asked again."""
        if self.pending:
            offer = self.pending.pop(0)
        elif self.waiting["slot"]:
            offer = self.waiting["slot"].pop(0)
        else:
            offer = None
            while offer is None and self.asked < self.num_trials:
                offer = self._new()
                if not self._packable(offer):
                    self.waiting["solo"].append(offer)
                    offer = None
            if offer is None:
                return None
        self.live[offer[0]] = (slot, offer)
        self.log.append(("start", offer[0], offer[1]))
        print(f"skray: slot {slot}: member {offer[0]} starts: {_brief(offer[1])}", file=sys.stderr, flush=True)
        return offer

    def solo(self) -> tuple[str, dict[str, Any]] | str | None:
        """The next member of a kind that trains the backbone (a tune's LoRA), to run solo as a Tune trial
        of its own beside the slots: its id and params; "wait" while Optuna's last pick waits for a
        slot's seat (so that Optuna is asked one trial at a time, as results come in); None once no
        more will come."""
        if self.waiting["solo"]:
            offer = self.waiting["solo"].pop(0)
        elif self.asked >= self.num_trials:
            return None
        elif self.waiting["slot"]:
            return "wait"
        else:
            offer = self._new()
            if self._packable(offer):
                self.waiting["slot"].append(offer)
                return "wait"
        self.live[offer[0]] = (None, offer)
        return offer[0], offer[1]

    def _new(self) -> tuple[str, dict[str, Any], dict]:
        """A new member: the grid's next point, or Optuna's next trial (ASHA hears of it)."""
        from skray.search import trial_experiment

        self.asked += 1
        member = f"m{self.token}{self.asked:03d}"
        params = self.points[self.asked - 1] if self.searcher is None else self.searcher.suggest(member)
        self.asha.on_trial_add(None, _Member(member, params))
        return member, params, trial_experiment(self.command, self.experiment, params).model_dump()

    @staticmethod
    def _packable(offer: tuple) -> bool:
        from skray.methods.packed import PACKABLE

        return ExperimentConfig.model_validate(offer[2]).method.kind in PACKABLE

    def exhausted(self) -> bool:
        """Whether every trial was handed out (a run that reaches its end with this false was cut)."""
        return self.asked >= self.num_trials and not self.pending and not any(self.waiting.values())

    def events(self, since: int) -> list[tuple[str, str, dict | None]]:
        """What happened to members since event ``since``: the driver's progress lines and trackers
        (``MemberCallbacks``)."""
        return self.log[since:]

    def rejoin(self, slot: int) -> list[tuple]:
        """The members ``slot`` was training when its workers failed: Ray Train restarts the worker group,
        and they go on from their last report (``skray.train.packed``'s resume.pt)."""
        return [offer for s, offer in self.live.values() if s == slot]

    def tell(self, member: str, report: dict[str, Any]) -> str:
        """An evaluation of a running member: "continue", or "stop" where ASHA stops it (Optuna is then
        told it was pruned, as Tune tells it of a trial ASHA stopped). A solo member's own Tune trial
        shows its story to the callbacks; the log tells the slots' members'."""
        if member not in self.live:  # an ended solo member's last report, sent again by its restored trial
            return "continue"
        if self.searcher is not None:
            self.searcher.on_trial_result(member, report)
        slotted = self.live[member][0] is not None
        if slotted:
            self.log.append(("result", member, report))
        decision = self.asha.on_trial_result(None, _Member(member), report)
        print(
            f"skray: member {member} step {report['step']}: {self.key} {report.get(self.key, float('nan')):.4f}"
            + ("; ASHA stops it" if decision == "STOP" else ""),
            file=sys.stderr,
            flush=True,
        )
        if decision == "STOP":
            if slotted:
                self.log.append(("end", member, report))
            self.live.pop(member, None)
            self.asha.on_trial_complete(None, _Member(member), report)
            if self.searcher is not None:
                self.searcher.on_trial_complete(member, report)
            return "stop"
        return "continue"

    def end(self, member: str, report: dict[str, Any] | None, error: str | None) -> None:
        """A member that reached its last step (``report``: its final one) or failed (``error``); once
        (the end of a member ASHA stopped was taken when it stopped it)."""
        ended = self.live.pop(member, None)
        if ended is None:
            return
        if ended[0] is not None:
            self.log.append(("end", member, report) if error is None else ("error", member, {"error": error}))
        if error is None and report is not None:
            self.asha.on_trial_complete(None, _Member(member), report)
            test = report.get("test_acc", float("nan"))
            print(f"skray: member {member} done: test_acc {test:.4f}", file=sys.stderr, flush=True)
        else:
            self.asha.on_trial_remove(None, _Member(member))
            print(f"skray: member {member} failed: {error}", file=sys.stderr, flush=True)
        if self.searcher is not None:
            self.searcher.on_trial_complete(member, report, error=error is not None)


class Lanes(Searcher):
    """Tune's trials in a packed run: the slots first, then the trials that run solo beside them: a
    compare's points listed up front, or, with ``broker``, a tune's members of a kind that trains the
    backbone, asked of the broker whenever Tune has room for a trial (``Broker.solo``). Unlike Tune's
    ``points_to_evaluate``, the configurations need no space, and ``max_concurrent_trials`` holds."""

    def __init__(self, configs: list[dict[str, Any]], broker: str | None = None) -> None:
        super().__init__()
        self.configs, self.handed, self.broker = configs, 0, broker

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.handed < len(self.configs):
            self.handed += 1
            return dict(self.configs[self.handed - 1])
        if self.broker is None:
            return Searcher.FINISHED
        offer = ray.get(ray.get_actor(self.broker, namespace=NAMESPACE).solo.remote())
        if offer is None:
            return Searcher.FINISHED
        if offer == "wait":
            return None
        member, params = offer
        return {"member": member, **params}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # the broker hears of a solo member's end (``MemberJudge``); the others run whatever happened

    def save(self, checkpoint_path: str) -> None:
        storage.write_text(checkpoint_path, json.dumps({"configs": self.configs, "handed": self.handed}))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(storage.read_text(checkpoint_path))
        self.configs, self.handed = state["configs"], state["handed"]


class MemberJudge(FIFOScheduler):
    """Tune's scheduler in a packed tune: a member that runs solo as a Tune trial of its own is judged
    by the run's broker as the slots' members are (ASHA's rungs, Optuna told of each evaluation and of
    its end); slots and a compare's solo points run to their ends."""

    def __init__(self, broker: str) -> None:
        super().__init__()
        self.broker = broker

    def _tell(self, method: str, *args: Any) -> Any:
        return ray.get(getattr(ray.get_actor(self.broker, namespace=NAMESPACE), method).remote(*args))

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        member = (trial.config or {}).get("member")
        if member is None or "step" not in result:
            return FIFOScheduler.CONTINUE
        report = {k: v for k, v in result.items() if k not in AUTO_RESULT_KEYS and k != "config"}
        return FIFOScheduler.STOP if self._tell("tell", member, report) == "stop" else FIFOScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        member = (trial.config or {}).get("member")
        if member is not None:
            report = {k: v for k, v in (result or {}).items() if k not in AUTO_RESULT_KEYS and k != "config"}
            self._tell("end", member, report or None, None)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        member = (trial.config or {}).get("member")
        if member is not None:
            self._tell("end", member, None, "its trial failed (the error is in its folder)")


def member_dirname(trial: Any) -> str:
    """A Tune trial's folder name: a solo member's is the member's, as a slot's members' are
    (``train_<member>``); "" leaves Tune's own."""
    from skray.train.packed import MEMBER_DIR

    member = (trial.config or {}).get("member")
    return MEMBER_DIR.format(member=member) if member else ""


class MemberCallbacks(tune.Callback):
    """Tune callbacks written for trials (skray's progress lines, Ray's TensorBoard and MLflow
    loggers) in a packed run: each member is a trial to them, from the broker's story (polled on each
    turn of Tune's loop), and a solo trial beside the slots (a compare's LoRA) is what it is; a slot,
    which only holds members, is none of theirs."""

    def __init__(self, callbacks: list[tune.Callback], run_dir: str) -> None:
        self.callbacks, self.run_dir = callbacks, run_dir
        self.seen, self.members, self.asked = 0, {}, None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "asked"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        # a resumed run's broker is new, and tells its story from the start
        self.seen, self.members, self.asked = 0, {}, None

    def setup(self, **info: Any) -> None:
        for c in self.callbacks:
            c.setup(**info)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._solo("on_trial_start", iteration, trials, trial, **info)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._solo("on_trial_result", iteration, trials, trial, result=result, **info)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._solo("on_trial_complete", iteration, trials, trial, **info)
        self._poll(iteration, wait=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._solo("on_trial_error", iteration, trials, trial, **info)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._poll(0, wait=True)

    def _solo(self, hook: str, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not _is_slot(trial):
            solo = [_named(t) for t in trials if not _is_slot(t)]  # the slots' members: from the broker's story
            for c in self.callbacks:
                getattr(c, hook)(iteration, solo, _named(trial), **info)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._poll(iteration, wait=False)

    def _poll(self, iteration: int, wait: bool) -> None:
        """The broker's new events, forwarded. Tune's loop does not wait for them (``wait`` False): the
        broker answers after the call it is busy with (a slot's ask, Optuna's sampling) or, at first,
        after its process has started, and blocking on it stalled the driver 3-5 s ("callbacks.on_step_end
        took ..."). A trial's end and the run's end wait, so that every event is forwarded by then."""
        if self.asked is not None and (wait or ray.wait([self.asked], timeout=0)[0]):
            self._forward(iteration, self._answer())
        if self.asked is None:
            self._ask()
            if wait and self.asked is not None:  # and what the broker has told since
                self._forward(iteration, self._answer())

    def _ask(self) -> None:
        try:
            self.asked = ray.get_actor(broker_name(self.run_dir), namespace=NAMESPACE).events.remote(self.seen)
        except ValueError:  # no broker (yet, or any more)
            self.asked = None

    def _answer(self) -> list[tuple[str, str, dict | None]]:
        asked, self.asked = self.asked, None
        try:
            return ray.get(asked)
        except ray.exceptions.RayActorError:  # the broker ended (a finished or failed run) before it answered
            return []

    def _forward(self, iteration: int, events: list[tuple[str, str, dict | None]]) -> None:
        from skray.train.packed import MEMBER_DIR

        self.seen += len(events)
        for kind, member, payload in events:
            if kind == "start":
                folder = storage.join(self.run_dir, MEMBER_DIR.format(member=member))
                self.members[member] = MemberTrial(member, payload, storage.location(folder))
            trial = self.members[member]
            if kind == "result":
                trial.last_result = payload | {"training_iteration": trial.reports + 1}  # what Tune adds
                trial.reports += 1
            elif kind == "end":
                trial.last_result = payload
            for c in self.callbacks:
                if kind == "start":
                    c.on_trial_start(iteration, [], trial)
                elif kind == "result":
                    c.on_trial_result(iteration, [], trial, trial.last_result)
                elif kind == "end":
                    c.on_trial_complete(iteration, [], trial)
                else:
                    c.on_trial_error(iteration, [], trial)


class MemberTrial:
    """What Tune's callbacks read of a trial, for a member: its id (also its name, as an MLflow run's),
    what was searched (its config), its last report, and its folder (where TensorBoard writes)."""

    def __init__(self, trial_id: str, config: dict[str, Any], local_path: str) -> None:
        self.trial_id, self.config, self.evaluated_params, self.local_path = trial_id, config, config, local_path
        self.last_result: dict[str, Any] | None = None
        self.reports = 0

    def init_local_path(self) -> None:
        os.makedirs(self.local_path, exist_ok=True)

    def __str__(self) -> str:
        return self.trial_id


class SoloMember:
    """A Tune trial that runs one member solo (a tune's LoRA beside the slots), as callbacks see it: by
    the member's id, as its row, folder and Optuna trial name it."""

    def __init__(self, trial: Any) -> None:
        self._trial = trial

    @property
    def trial_id(self) -> str:
        return self._trial.config["member"]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SoloMember) and other.trial_id == self.trial_id

    def __hash__(self) -> int:
        return hash(self.trial_id)

    def __str__(self) -> str:
        return self.trial_id


def _named(trial: Any) -> Any:
    return SoloMember(trial) if "member" in (trial.config or {}) else trial


def _is_slot(trial: Any) -> bool:
    return "slot" in (trial.config or {})


def _member_of(directory: str) -> str | None:
    """The member a run's folder belongs to (``train_<member>``, as ``skray.train.packed`` names it)."""
    found = re.fullmatch(r"train_(m[0-9a-f]{5}\d{3,})", directory.rstrip("/").rsplit("/", 1)[-1])
    return found.group(1) if found else None


def _brief(params: dict[str, Any]) -> str:
    shown = {k: (f"{v:.3g}" if isinstance(v, float) else str(v)[:40]) for k, v in params.items()}
    return ", ".join(f"{k}={v}" for k, v in shown.items())
