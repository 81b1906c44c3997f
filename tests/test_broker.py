"""The broker's lanes in a packed search over kinds of both sorts: Optuna's picks of a kind that shares
the frozen backbone go to the slots' seats, the others to Tune trials of their own, one study; and a
killed driver's new broker takes a solo member that was running as running, not as lost."""

import json

import pytest

from skray.broker import Broker

BrokerClass = Broker.__ray_metadata__.modified_class  # the actor's class, run here without Ray


def _broker(cfg, run_dir):
    return BrokerClass(cfg.model_dump(), str(run_dir), "tune", None)


def _kind(params: dict) -> str:
    return params["method"]


def test_each_pick_goes_to_its_lane_and_optuna_is_asked_one_pick_ahead_at_most(tiny_experiment, tmp_path):
    cfg = tiny_experiment(search__num_trials=6, search__kinds=["sk_prefix", "lora"])
    broker = _broker(cfg, tmp_path / "tiny-tune-20261203-000000")
    seated, solo, waits = [], [], 0
    while (got := broker.solo()) is not None:
        if got == "wait":  # Optuna's last pick is packable: it waits for a seat, and nothing more is asked
            waits += 1
            assert broker.asked == len(seated) + len(solo) + 1
            assert broker.solo() in ("wait", None)
            assert broker.asked == len(seated) + len(solo) + 1
            seated.append(broker.ask(0))
        else:
            solo.append(got)
    while (offer := broker.ask(0)) is not None:
        seated.append(offer)
    assert waits
    assert solo
    assert {_kind(params) for _, params, _ in seated} == {"sk_prefix"}
    assert {_kind(params) for _, params in solo} == {"lora"}
    members = [m for m, _, _ in seated] + [m for m, _ in solo]
    assert len(set(members)) == len(members) == 6
    assert broker.exhausted()
    assert broker.solo() is None


def test_a_new_broker_keeps_a_running_solo_member_running_and_judges_it(tiny_experiment, tmp_path):
    cfg = tiny_experiment(search__num_trials=2, search__kinds=["sk_prefix", "lora"], search__grace_period=1)
    run_dir = tmp_path / "tiny-tune-20261203-000000"
    first = _broker(cfg, run_dir)
    assert first.solo() == "wait"  # the first pick is sk_prefix (Space.covering): it waits for a seat
    first.ask(0)
    member, params = first.solo()  # then lora
    assert _kind(params) == "lora"
    folder = run_dir / f"train_{member}"  # as Tune writes a solo member's trial folder (member_dirname)
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"member": member, **params}))
    report = {"trial_id": member, "step": 0, "val_acc": 0.5, "best_val_acc": 0.5}
    (folder / "result.json").write_text(json.dumps(report) + "\n")

    again = _broker(cfg, run_dir)  # the driver died: its sk_prefix pick never got a folder, the lora one runs
    assert member in again.live
    assert again.live[member][0] is None
    assert again.pending == []  # not handed to a slot: Tune restores its own trial
    states = {t.user_attrs["trial"]: t.state.name for t in again.searcher.study.trials}
    assert states[member] == "RUNNING"
    assert sorted(states.values()) == ["FAIL", "RUNNING"]
    assert again.tell(member, report | {"step": 2, "val_acc": 0.6, "best_val_acc": 0.6}) == "continue"
    assert again.log == []  # its own Tune trial shows its story; the log is the slots' members'
    final = report | {"step": 4, "val_acc": 0.7, "best_val_acc": 0.7, "test_acc": 0.65, "done": True}
    again.end(member, final, None)
    again.end(member, final, None)  # Tune may end it twice (ASHA's stop, then the trial's end): told once
    (told,) = [t for t in again.searcher.study.trials if t.user_attrs["trial"] == member]
    assert told.state.name == "COMPLETE"
    assert told.values == [pytest.approx(0.7)]


def test_fp16_runs_solo_since_packed_members_keep_no_loss_scale(tiny_experiment, capsys):
    """fp16 needs DeepSpeed's loss scale, which a slot's members (their own AdamW) lack: pack auto runs
    the trials solo and says why in one line; a pack asked for is refused with how to fix it."""
    from skray.broker import pack_size
    from skray.errors import ConfigError

    cfg = tiny_experiment(train__precision="fp16")
    assert pack_size(cfg, "auto", ["sk_prefix"], 4, 1, True, "search.pack") == 1
    assert "trials run solo: fp16 trains with a loss scale" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="search.pack 4: fp16 .* use bf16; set search.pack: 1"):
        pack_size(cfg, 4, ["sk_prefix"], 4, 1, True, "search.pack")
    bf16 = tiny_experiment(train__precision="bf16")
    assert pack_size(bf16, "auto", ["sk_prefix"], 4, 1, True, "search.pack") == 4


@pytest.mark.slow
def test_tunes_loop_never_waits_on_a_busy_broker_and_a_runs_end_forwards_everything(ray_cluster, tmp_path):
    """Each turn of Tune's loop polls the broker for what happened to members (progress lines, trackers).
    A broker busy with a slot's ask or Optuna's sampling, or still starting, answers late: the loop goes
    on without its answer (waiting stalled the driver 3-5 s a time), and the run's end waits for it."""
    import threading
    import time

    import ray
    from ray import tune

    from skray.broker import NAMESPACE, MemberCallbacks, broker_name

    @ray.remote(num_cpus=0, max_concurrency=2)
    class BusyBroker:
        def __init__(self) -> None:
            self.busy = True

        def done(self) -> None:
            self.busy = False

        def events(self, since: int) -> list:
            while self.busy:
                time.sleep(0.01)
            return [("start", "m1", {"lr": 0.1}), ("result", "m1", {"step": 0, "val_acc": 0.5})][since:]

    class Heard(tune.Callback):
        def __init__(self) -> None:
            self.calls = []

        def on_trial_start(self, iteration, trials, trial, **info):
            self.calls.append(("start", trial.trial_id))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.calls.append(("result", trial.trial_id, result["val_acc"]))

    run_dir = str(tmp_path / "tiny-tune-20261205-000000")
    broker = BusyBroker.options(name=broker_name(run_dir), namespace=NAMESPACE).remote()
    heard = Heard()
    callbacks = MemberCallbacks([heard], run_dir)
    loop = threading.Thread(target=lambda: [callbacks.on_step_end(i, []) for i in range(5)], daemon=True)
    loop.start()
    loop.join(timeout=60)  # it never returns if a turn waits for the busy broker
    assert not loop.is_alive()
    assert heard.calls == []
    ray.get(broker.done.remote())
    callbacks.on_experiment_end([])
    assert heard.calls == [("start", "m1"), ("result", "m1", 0.5)]
    callbacks.on_experiment_end([])  # nothing new: nothing forwarded twice
    assert len(heard.calls) == 2
    ray.kill(broker)
