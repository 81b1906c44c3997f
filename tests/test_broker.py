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
