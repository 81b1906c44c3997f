"""Packed trials: members trained side by side over one frozen backbone train as they would alone.

The solo path (each method's own ``forward``, DeepSpeed's engine) and the packed one
(``skray.methods.packed``, ``skray.train.packed``) are two implementations; these tests hold them to
each other step by step, since batching changes float summation order and AdamW amplifies that.
"""

import contextlib
import copy
import json
import os
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import psutil
import pytest
import torch

from skray.backbones import Backbone
from skray.config import DataConfig, MethodConfig, TrainConfig
from skray.data.collate import encode, take
from skray.methods import build_model
from skray.methods.packed import packed_forward
from skray.train.batches import train_batches
from skray.train.deepspeed import build_engine, lr_factor
from skray.train.evaluate import evaluate, task_loss
from skray.train.packed import Member, PackedSlot, evaluate_packed
from tests.conftest import (
    _llama,
    assert_one_mlflow_run_per_trial,
    assert_study_matches,
    minilm_tokenizer,
    study_of,
    tensorboard_tags,
    tiny_llama,
)

LABELS = ["neg", "pos"]
WORDS = {"neg": " negative", "pos": " positive"}
# Three members as different as a pack gets: kinds, wordings (k), prefix lengths (m), heads and rates.
MEMBERS = [
    ({"kind": "sk_prefix", "wording": "is it good?", "prefix_length": 3}, 1e-2),
    (
        {"kind": "sk_prompt", "wording": "classify the sentiment of the review", "prefix_length": 6, "head": "linear"},
        3e-3,
    ),
    ({"kind": "sk_prefix", "wording": "the sentiment of this review, positive or negative", "prefix_length": 9}, 5e-2),
    ({"kind": "linear_probe", "head": "linear"}, 1e-3),
]
# PEFT's prompt methods pack too, from the virtual part PEFT itself makes (``get_prompt``).
PEFT = [
    ({"kind": "prompt_tuning", "prefix_length": 4}, 3e-2),
    ({"kind": "prompt_tuning_text", "wording": "is it good?", "prefix_length": 5, "head": "linear"}, 3e-2),
    ({"kind": "p_tuning", "prefix_length": 3}, 1e-2),
    ({"kind": "prefix_tuning", "prefix_length": 6}, 1e-2),
    ({"kind": "sk_prefix", "wording": "is it good?", "prefix_length": 2}, 1e-2),
]
TEXTS = [
    "a wonderful moving film",
    "dull and far too long to sit through",
    "great",
    "I wanted to leave after ten minutes, and the second half is worse",
    "fine",
    "a mess",
    "the best thing this year",
    "not good, not bad",
]


def _member(backbone, spec: dict):
    torch.manual_seed(1)
    return build_model(backbone, MethodConfig(label_words=WORDS, adapter_rank=4, **spec), LABELS)


def _data(backbone) -> dict[str, torch.Tensor]:
    df = pd.DataFrame({"text": TEXTS, "label": [1, 0, 1, 0, 1, 0, 1, 0]})
    return encode(df, backbone.tokenizer, DataConfig(), add_special_tokens=False)


def _bare_slot(backbone, cfg) -> PackedSlot:
    """A slot without Ray: one rank on this CPU, ``_data``'s rows as every split."""
    s = object.__new__(PackedSlot)
    s.device, s.rank, s.world, s.slot, s.class_weight, s.backbone = torch.device("cpu"), 0, 1, 0, None, backbone
    s.data = dict.fromkeys(("train", "validation", "test"), _data(backbone))
    s.label_names, s.run_dir, s.facts = ["fresh", "rotten"], cfg.storage_path, {}
    s.cfg = _settled(cfg)
    s.timing, s.step0_val, s.step0_test = {"eval_s": 0.0}, {}, {}
    return s


def _settled(cfg, precision: str = "fp32"):
    """``cfg`` with its precision decided, as ``PackedSlot.setup`` leaves the slot's."""
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": precision})})


def _trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("members", [MEMBERS, PEFT], ids=["sk", "peft"])
def test_one_packed_pass_gives_each_member_its_solo_logits_loss_and_gradients_for_ten_steps(decoder, members):
    """Each member trains alone (its own AdamW); before each of 10 steps its packed twin gets the solo
    state, and both compute logits, loss and gradients on the member's own rows of that step."""
    data = _data(decoder)
    solo = [_member(decoder, spec) for spec, _ in members]
    packed = [copy.deepcopy(m) for m in solo]
    for twin, model in zip(packed, solo, strict=True):
        twin.backbone = model.backbone  # one backbone for the pack, as a slot holds it
    optimizers = [torch.optim.AdamW(_trainable(m), lr=lr) for m, (_, lr) in zip(solo, members, strict=True)]
    rows = [train_batches(len(TEXTS), 1 + i, 0, 1, seed=i) for i in range(len(members))]  # own sizes and orders
    for _ in range(10):
        batches = [take(data, next(r)) for r in rows]
        for twin, model in zip(packed, solo, strict=True):
            twin.load_state_dict(model.state_dict())
        logits = packed_forward(decoder.model, packed, [(b["input_ids"], b["attention_mask"]) for b in batches])
        losses = [task_loss(out, b["labels"]) for out, b in zip(logits, batches, strict=True)]
        torch.stack(losses).sum().backward()
        for i, (model, twin, b, opt) in enumerate(zip(solo, packed, batches, optimizers, strict=True)):
            alone = model(b["input_ids"], b["attention_mask"])
            loss = task_loss(alone, b["labels"])
            loss.backward()
            torch.testing.assert_close(logits[i], alone, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(losses[i], loss, rtol=1e-5, atol=1e-6)
            for p, q in zip(_trainable(twin), _trainable(model), strict=True):
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)
                p.grad = None
            opt.step()
            opt.zero_grad()


def test_a_packed_slot_step_moves_each_member_as_its_deepspeed_engine_does(one_rank, decoder):
    """Two steps of ``PackedSlot._step`` (its own AdamW, schedule and clipping per member, micro-batches
    accumulated) against each member's solo DeepSpeed engine (ZeRO 2, global clipping at 1): the same
    weights after each step."""
    data = _data(decoder)
    slot = object.__new__(PackedSlot)  # the slot's step alone: no Ray, one rank
    slot.device, slot.world, slot.class_weight, slot.backbone = torch.device("cpu"), 1, None, decoder
    slot.data, slot.cfg = {"train": data}, SimpleNamespace(train=TrainConfig(precision="fp32"))
    slot.seats, engines = [], []
    for i, (spec, lr) in enumerate(MEMBERS[:3]):
        t = TrainConfig(zero_stage=2, micro_batch_size=2, grad_accum=2, max_steps=4, lr=lr, lr_warmup_steps=1)
        solo = _member(decoder, spec)
        twin = copy.deepcopy(solo)
        twin.backbone = decoder.model
        engines.append((build_engine(solo, t), train_batches(len(TEXTS), 2, 0, 1, seed=i)))
        trains = _trainable(twin)
        opt = torch.optim.AdamW(trains, lr=lr, weight_decay=t.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s, t=t: lr_factor(s, t.warmup, t.max_steps))
        cfg = type("Cfg", (), {"train": t})()
        member = Member(f"m{i}", cfg, twin, trains, opt, schedule, train_batches(len(TEXTS), 2, 0, 1, seed=i), "", 0.0)
        slot.seats.append(member)
    for _ in range(2):
        slot._step()
        for engine, rows in engines:
            for _ in range(2):
                b = take(data, next(rows))
                engine.backward(task_loss(engine(b["input_ids"], b["attention_mask"]), b["labels"]))
                engine.step()
        for member, (engine, _) in zip(slot.seats, engines, strict=True):
            for p, q in zip(member.params, _trainable(engine.module), strict=True):
                torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_a_member_taken_up_from_its_resume_state_goes_on_as_if_it_had_never_stopped(decoder, tiny_experiment):
    """A member's resume.pt (written at each report) rebuilt in a new slot, as after a killed worker or
    driver: the same weights and optimizer state after the remaining steps as a straight run, the same
    data next, and its result.json cut back to the reports its resumed state had made."""
    from skray.train.packed import write_member_state

    cfg = tiny_experiment(method__kind="sk_prompt", method__head="linear", train__lr=1e-2, train__max_steps=4)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"num_workers": 1, "grad_accum": 2})})

    def slot() -> PackedSlot:
        return _bare_slot(decoder, cfg)

    def steps(s: PackedSlot, member: Member, n: int) -> None:
        s.seats = [member]
        for _ in range(n):
            s._step()
            member.state.step += 1

    straight = slot()
    whole = straight._member("m00000001", {}, cfg)
    steps(straight, whole, 4)

    first = slot()
    cut = first._member("m00000002", {}, cfg)
    steps(first, cut, 2)
    result = Path(cut.directory) / "result.json"
    result.write_text("".join(json.dumps({"step": step}) + "\n" for step in (0, 2, 4)))  # 4: made, then lost
    write_member_state(cut)
    again = slot()._member("m00000002", {}, cfg)
    assert (again.state.step, again.state.resumed_from) == (2, 2)
    assert [json.loads(line)["step"] for line in result.read_text().splitlines()] == [0, 2]
    steps(slot(), again, 2)
    for p, q in zip(whole.params, again.params, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    for a, b in zip(whole.optimizer.state.values(), again.optimizer.state.values(), strict=True):
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=0, atol=0)
    assert whole.schedule.get_last_lr() == again.schedule.get_last_lr()


def test_a_members_step0_test_score_waits_for_its_end_once_per_step0_model(decoder, tiny_experiment, monkeypatch):
    """The step-0 model is scored on validation when a member joins, on test only when it ends tested,
    from the step-0 weights it kept (through a resume.pt too): members ASHA stops never pay a test pass,
    and members with one step-0 model (learning rates of one verbalizer setting) pay one between them."""
    from skray.train.packed import read_member_state, write_member_state

    base = tiny_experiment(method__kind="sk_prefix", method__head="verbalizer", train__max_steps=4)
    base = base.model_copy(update={"train": base.train.model_copy(update={"num_workers": 1, "lr": 5e-2})})
    linear = base.model_copy(update={"method": base.method.model_copy(update={"head": "linear"})})
    faster = base.model_copy(update={"train": base.train.model_copy(update={"lr": 1e-1})})
    slot = _bare_slot(decoder, base)
    passes: list[tuple[str, list[str]]] = []
    scores = slot._scores
    monkeypatch.setattr(
        slot, "_scores", lambda ms, split: passes.append((split, [m.id for m in ms])) or scores(ms, split)
    )
    monkeypatch.setattr(slot, "_reports", lambda *args, **kwargs: None)
    slow, fast, fresh = (slot._member(f"m0000000{i}", {}, c) for i, c in enumerate([base, faster, linear]))
    untrained = slot._member("m00000009", {}, base)  # the step-0 model, to score alone

    slot._zero_shot([slow, fast, fresh])
    (split, scored), *_ = passes
    assert split == "validation"
    assert len(scored) == 2  # slow and fast: one step-0 model
    assert "m00000002" in scored
    assert not any(m.state.zero_shot_test for m in (slow, fast, fresh))
    slot.seats = [slow, fast, fresh]
    for _ in range(2):
        slot._step()
    write_member_state(fast)  # a report mid-run; the slot then restarts (a killed worker)
    fast = slot._member("m00000001", {}, faster)
    assert fast.step0_key == slow.step0_key
    assert read_member_state(fast.directory)["step0"].keys() == slow.step0.keys()

    slot._zero_shot_test([slow, fast])  # they end tested; ASHA stopped ``fresh``
    assert [split for split, _ in passes[1:]] == ["test"]
    assert len(passes[1][1]) == 1
    alone = evaluate(
        untrained.model,
        slot.data["test"],
        batch_size=4,
        rank=0,
        world=1,
        device=slot.device,
        label_names=slot.label_names,
    )
    for member in (slow, fast):
        assert member.state.zero_shot_test == pytest.approx(alone)
        assert member.step0 is None
    assert not fresh.state.zero_shot_test


def test_seats_hold_what_memory_holds_beside_what_the_worker_holds_and_never_fewer_than_one():
    from skray.train.memory import gpu_reserve_bytes, seats_that_fit

    assert seats_that_fit(4, [2, 2, 2], budget_bytes=10, use_gpu=False) == 3
    assert seats_that_fit(4, [2, 3, 2], budget_bytes=10, use_gpu=False) == 2  # in order: the third waits
    assert seats_that_fit(9, [2], budget_bytes=10, use_gpu=False) == 1  # alone, as a solo trial would run
    gib = 2**30
    budget = 80 * gib
    room = budget - gpu_reserve_bytes(budget) - 20 * gib
    assert seats_that_fit(20 * gib, [gib] * 100, budget, use_gpu=True) == room // gib


def test_a_slot_seats_the_members_its_memory_holds_and_queues_the_rest_until_a_seat_frees(
    decoder, tiny_experiment, monkeypatch, capsys
):
    """Members are built and their step's memory measured as they come; those beyond what the worker's
    budget holds wait (one line says so) and take the seat of one that leaves."""
    cfg = tiny_experiment(train__num_workers=1)
    slot = object.__new__(PackedSlot)  # no Ray, one rank
    slot.device, slot.rank, slot.world, slot.slot, slot.pack, slot.backbone = torch.device("cpu"), 0, 1, 0, 3, decoder
    slot.data, slot.label_names, slot.run_dir, slot.facts = {"train": _data(decoder)}, ["fresh", "rotten"], "", {}
    slot.run_dir, slot.cfg, slot.seats, slot.waiting, slot.members, slot.said_memory = (
        cfg.storage_path,
        _settled(cfg),
        [],
        [],
        0,
        False,
    )
    scored: list[str] = []
    monkeypatch.setattr(slot, "_zero_shot", lambda members: scored.extend(m.id for m in members))
    slot._build([(f"m0000000{i}", {}, cfg.model_dump()) for i in range(3)])
    costs = [m.step_bytes for m in slot.waiting]
    assert all(c > 0 for c in costs), costs  # measured: a real training pass of each on this CPU
    slot.held, slot.budget = 10 * 2**30, 10 * 2**30 + costs[0] + costs[1]  # room for two of them
    assert [m.id for m in slot._admit()] == ["m00000000", "m00000001"]
    assert [m.id for m in slot.waiting] == ["m00000002"]
    assert "memory holds 2 members at once, not 3" in capsys.readouterr().out
    slot.seats.pop(0)  # one ends
    assert [m.id for m in slot._admit()] == ["m00000002"]
    assert scored == ["m00000000", "m00000001", "m00000002"]  # step 0, once each, when seated


def test_pack_auto_doubles_the_seats_while_a_doubling_cuts_each_members_share_of_a_pass():
    from skray.train.step_curve import grow

    assert grow(32, lambda n: float(n)) == (1, {1: 1.0, 2: 2.0})  # a busy device: more members save nothing
    saturating = grow(32, lambda n: max(1.0, n / 8))  # a GPU's: free up to 8, then as busy as it gets
    assert saturating == (8, {1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0, 16: 2.0})
    assert grow(6, lambda n: 1.0)[0] == 6  # the last try at the cap itself
    assert grow(1, lambda n: 1.0) == (1, {1: 1.0})


@pytest.mark.parametrize(
    ("times", "memory_seats", "seats", "why"),
    [
        ([1.0, 1.1, 1.3], 4, 4, "4 seat(s), the most this slot was given (a pass of 1, 2, 4 member(s): 1, 1.1, 1.3 s)"),
        ([1.0, 1.96], 4, 1, "1 seat(s), a member's share of the pass is 0.98 s at 2 against 1 s at 1: not 10% less"),
        ([1.0, 1.1], 2, 2, "2 seat(s), what memory holds"),
    ],
    ids=["gains", "busy", "memory"],
)
def test_a_pack_auto_slot_keeps_the_seats_its_measured_step_time_pays_for(
    decoder, tiny_experiment, monkeypatch, capsys, times, memory_seats, seats, why
):
    """Before its first member trains, a ``pack: auto`` slot times real training passes of 1, 2, 4
    copies of it (the clock here reads ``times``) and keeps the seats where a doubling stopped paying,
    within what memory holds; the passes leave the member's weights, gradients and the random state
    as they found them, so it trains as it would have."""
    from skray.train import step_curve

    cfg = tiny_experiment(train__num_workers=1)
    slot = _bare_slot(decoder, cfg)
    slot.pack, slot.auto, slot.seats, slot.waiting, slot.members, slot.said_memory = 4, True, [], [], 0, False
    slot._build([("m00000000", {}, cfg.model_dump())])
    first = slot.waiting[0]
    slot.held, slot.budget = 2**30, 2**30 + memory_seats * first.step_bytes
    weights, rng = {n: p.clone() for n, p in first.model.named_parameters()}, torch.get_rng_state()
    clock, passes = iter(times), []

    def timed(run, device):
        run()
        passes.append(sum(p.grad.abs().sum().item() for p in first.params))  # a real backward reached it
        return next(clock)

    monkeypatch.setattr(step_curve, "fastest_seconds", timed)
    slot._choose_seats()
    assert slot.pack == seats
    assert why in capsys.readouterr().out
    assert len(passes) == len(times)
    assert all(g > 0 for g in passes)
    assert all(p.grad is None for p in first.params)
    assert torch.equal(torch.get_rng_state(), rng)
    for n, p in first.model.named_parameters():
        assert torch.equal(p, weights[n]), n


def test_packed_evaluation_scores_and_predicts_each_member_as_evaluate_does_alone(decoder):
    data = _data(decoder)
    members = [_member(decoder, spec) for spec, _ in MEMBERS]
    kwargs = {"batch_size": 3, "rank": 0, "world": 1, "device": torch.device("cpu"), "label_names": LABELS}
    rows = [{} for _ in members]
    packed = evaluate_packed(decoder.model, members, data, **kwargs, predictions=rows)
    for member, scores, own in zip(members, packed, rows, strict=True):
        alone_rows: dict = {}
        alone = evaluate(member, data, **kwargs, predictions=alone_rows)
        assert scores.keys() == alone.keys()
        for key in alone:
            assert scores[key] == pytest.approx(alone[key], abs=1e-6), key
        assert own["pred"].tolist() == alone_rows["pred"].tolist()  # per row, as the paired tests read them


@pytest.mark.slow
def test_a_packed_tune_gives_every_member_its_own_row_curve_study_trial_and_checkpoint(
    ray_cluster, tiny_experiment, tmp_path, capsys
):
    """Five configurations of a search over SK-Prefix and LoRA: the SK-Prefix ones in one slot of two
    seats (streaming: members join as others end), LoRA's solo beside it, asked of the same study.
    Each is its own row (a member with its slot), Optuna trial in the state its row says, curve,
    checkpoint in its folder, progress lines and trackers' runs (TensorBoard's event file, MLflow's
    run), all by its member id; `skray predict`/`export` read the best one as they read a solo trial's."""
    from skray.cli import main
    from skray.commands.tune import SEARCHED_HEADS
    from skray.config import MlflowConfig, TrackingConfig, parse_config
    from skray.run import run_experiment

    raw = tiny_experiment(search__pack=2, search__num_trials=5, train__max_steps=6, train__eval_every=2)
    raw = raw.model_dump(exclude_unset=True)
    del raw["method"]["head"]  # no head named: the search chooses it, members of different heads side by side
    raw["search"]["kinds"] = ["sk_prefix", "lora"]  # the first trials take each kind once (Space.covering)
    cfg = parse_config(raw)
    mlflow_store = f"sqlite:///{tmp_path}/mlflow.db"
    tracking = TrackingConfig(tensorboard=True, mlflow=MlflowConfig(tracking_uri=mlflow_store))
    cfg = cfg.model_copy(update={"tracking": tracking})
    run_dir, table = run_experiment(cfg, "tune", verbose=False)
    out, err = capsys.readouterr()
    assert "trials of lora run solo beside them" in err, err
    for member in table.trial:
        assert re.search(rf"^trial {member} started: method='(sk_prefix|lora)', ", out, re.M), out
        assert re.search(rf"^trial {member} step 2/6: val acc 0\.\d+", out, re.M), out
        assert re.search(rf"^trial {member} (completed: test acc|stopped early at step)", out, re.M), out
    assert "[5/5 trials ended" in out
    run_dir = Path(run_dir)
    assert (run_dir / "finished").exists()
    assert len(table) == 5
    assert set(table.status) <= {"completed", "early_stopped"}
    assert "completed" in set(table.status)
    packed, solo = table[table.method == "sk_prefix"], table[table.method == "lora"]
    assert len(packed)
    assert len(solo)
    assert set(packed.slot) == {0}
    assert solo.slot.isna().all()
    assert table.trial.str.fullmatch(r"m[0-9a-f]{5}\d{3}").all()  # members all, whichever lane ran them
    for member in solo.trial:
        assert list((run_dir / f"train_{member}").glob("checkpoint_*/*"))  # where predict looks
    assert set(table["head"]) <= set(SEARCHED_HEADS)
    assert table.trainable_params.gt(0).all()
    by_trial = assert_study_matches(run_dir, table)
    for row in table.itertuples():
        trial = by_trial[row.trial]
        reports = [
            json.loads(line) for line in (run_dir / f"train_{row.trial}" / "result.json").read_text().splitlines()
        ]
        steps = [r["step"] for r in reports]
        assert steps == list(range(0, steps[-1] + 1, 2))  # its own curve, from its own step 0
        if row.status == "completed":
            assert steps[-1] == 6
            assert trial.values == [pytest.approx(row.best_val_acc)]
    # Start-up once for the slot: later members join a running worker group.
    assert len(list(run_dir.glob("slot_*"))) == 1
    # Trackers see members, never the slot: an event file in each member's folder, an MLflow run each.
    events = sorted(run_dir.glob("*/events.out.tfevents.*"))
    assert sorted(e.parent.name for e in events) == sorted(f"train_{member}" for member in table.trial)
    assert "ray/tune/val_acc" in tensorboard_tags(events[0])
    assert_one_mlflow_run_per_trial(mlflow_store, cfg.name, table)

    out = tmp_path / "predictions.csv"
    rows = tmp_path / "rows.csv"
    pd.DataFrame({"text": ["a fine film", "dull"]}).to_csv(rows, index=False)
    assert main(["predict", str(run_dir), str(rows), "--out", str(out)]) == 0  # the best, of either lane
    assert len(pd.read_csv(out)) == 2
    assert main(["export", str(run_dir), "--out", str(tmp_path / "export")]) == 0  # the best, of either lane
    assert (tmp_path / "export" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_a_killed_slot_worker_restarts_the_slot_with_its_members_from_their_last_reports(
    ray_cluster, tiny_experiment, tmp_path
):
    """A worker of a slot killed mid-run: Ray Train restarts the worker group, the broker gives the slot
    back the members it was training, they go on from their last reports (their curves once) and
    finish; no member is lost or left running in the study."""
    from skray.run import run_experiment
    from tests.test_faults import _kill_a_worker_after_reports

    cfg = tiny_experiment(search__pack=2, search__num_trials=2, train__max_steps=120, train__eval_every=20)
    killed: list = []
    killer = threading.Thread(target=_kill_a_worker_after_reports, args=(tmp_path, [3], killed), daemon=True)
    killer.start()
    run_dir, table = run_experiment(cfg, "tune")
    killer.join(timeout=5)
    assert len(killed) == 1, "the run ended before a worker was killed"
    assert len(table) == 2
    assert set(table.status) <= {"completed", "early_stopped"}
    resumed = []
    for member in table.trial:
        reports = [json.loads(line) for line in (Path(run_dir) / f"train_{member}" / "result.json").open()]
        steps = [r["step"] for r in reports]
        assert steps == list(range(0, steps[-1] + 1, 20)), steps
        resumed.append(reports[-1]["resumed_from"])
        assert not (Path(run_dir) / f"train_{member}" / "resume.pt").exists()  # it ended: its state went
    assert max(resumed) >= 20, resumed  # taken up where its last report left it, not from step 0
    study = study_of(run_dir)
    assert sorted(t.state.name for t in study.trials) == sorted(
        {"completed": "COMPLETE", "early_stopped": "PRUNED"}[s] for s in table.status
    )


@pytest.mark.slow
def test_a_killed_packed_tune_driver_resumes_with_ended_members_kept_and_running_ones_going_on(
    tiny_experiment, tmp_path
):
    """`skray tune` packed over SK-Prefix and LoRA, killed (SIGKILL, with its local Ray) once one member
    has ended and another is mid-run, then run again: the same run goes on; the ended member is kept as
    it was, running ones go on from their last reports under their own Optuna trials (a slot's members
    from their saved state, the solo LoRA member's Tune trial from its checkpoint), the rest run; every
    member once in table and study."""
    import signal
    import subprocess
    import sys

    import yaml

    from skray.results import load_results
    from tests.test_faults import _wait

    cfg = tiny_experiment(
        search__pack=2, search__num_trials=3, search__grace_period=100, train__max_steps=300, train__eval_every=20
    )
    cfg = cfg.model_copy(
        update={
            "train": cfg.train.model_copy(update={"num_workers": 1}),
            "search": cfg.search.model_copy(update={"kinds": ["sk_prefix", "lora"]}),  # one LoRA member at least
        }
    )
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump()))
    command = [sys.executable, "-m", "skray.cli", "tune", str(path)]

    def reports(result: Path) -> list[dict]:
        try:
            return [json.loads(line) for line in result.read_text().splitlines()]
        except (OSError, json.JSONDecodeError):
            return []

    def ended_and_running() -> bool:
        found = [reports(p) for p in tmp_path.glob("*/train_m*/result.json")]
        return any(r and r[-1].get("done") for r in found) and any(len(r) >= 3 and not r[-1].get("done") for r in found)

    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait(ended_and_running, "one member ended and one mid-run")
    finally:  # the driver and the whole local Ray it started, workers included, as when its machine goes
        ray_processes = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        for child in ray_processes:
            with contextlib.suppress(psutil.Error):
                child.kill()
        proc.wait()
    before = {
        p.parent.name: p.read_text()
        for p in tmp_path.glob("*/train_m*/result.json")
        if reports(p)[-1:] and reports(p)[-1].get("done")
    }
    assert before
    running = {
        p.parent.name: reports(p)[-1]["step"]
        for p in tmp_path.glob("*/train_m*/result.json")
        if p.parent.name not in before and reports(p)  # a member just started has an empty file
    }
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert (run_dir / "finished").exists()
    table = load_results(run_dir)
    assert len(table) == 3
    assert set(table.status) == {"completed"}
    assert "lora" in set(table.method)
    assert table[table.method == "lora"].slot.isna().all()
    for name, text in before.items():
        assert (run_dir / name / "result.json").read_text() == text  # kept as it was, not run again
    for member in table.trial:
        steps = [r["step"] for r in reports(run_dir / f"train_{member}" / "result.json")]
        assert steps == list(range(0, 301, 20)), steps
    # Taken up at its last report (the one before, if the kill came between the report and its state;
    # a later one, if the dying run's workers wrote on for a moment): not from step 0.
    resumed = {name: reports(run_dir / name / "result.json")[-1]["resumed_from"] for name in running}
    assert all(resumed[name] >= step - 20 for name, step in running.items()), (running, resumed)
    assert max(resumed.values()) >= 20, resumed
    study = study_of(run_dir)
    assert sorted(t.user_attrs["trial"] for t in study.trials if t.state.name == "COMPLETE") == sorted(table.trial)
    assert not [t for t in study.trials if t.state.name == "RUNNING"]


@pytest.mark.slow
def test_a_packed_compare_packs_what_it_can_runs_lora_solo_beside_and_a_member_that_fails_fails_alone(
    ray_cluster, tiny_experiment, capsys
):
    """compare packs the methods x seeds that share a frozen backbone into one slot and runs LoRA's
    seeds as solo trials in the same run; a member its method refuses (adapter linear keeps m = k, and
    m is not k here) is its own failed row, with the error, and the slot goes on with the others: here
    the refused ones fill both seats first, and the slot must ask again rather than end empty."""
    from skray.config import parse_config
    from skray.results import load_results
    from skray.run import run_experiment

    bad = {"kind": "sk_prefix", "adapter": "linear", "prefix_length": 1}
    raw = tiny_experiment(train__max_steps=4, train__eval_every=2).model_dump()
    cfg = parse_config(raw | {"compare": {"methods": [bad, "sk_prefix", "lora"], "seeds": [0, 1], "pack": 2}})
    run_dir, summary = run_experiment(cfg, "compare", verbose=False)
    out, err = capsys.readouterr()
    assert "4 trials as members of 1 slot(s) of 2," in err, err
    assert "2 trials run solo beside them" in err, err
    assert len(summary) == 3  # compare's table: a row per method
    table = load_results(run_dir)
    assert len(table) == 6, table[["trial", "method", "status", "slot"]].to_string()
    assert table.slot.eq(0).sum() == 4
    assert table[table.method == "lora"].slot.isna().all()
    failed = table[table.status == "error"]
    assert len(failed) == 2
    assert failed.error.str.contains("prefix_length").all(), failed.error.tolist()
    assert set(table[table.status == "completed"].method) == {"sk_prefix", "lora"}
    assert "[6/6 trials ended" in out, out  # members and solo trials, each one line when it ends
    assert (Path(run_dir) / "finished").exists()
    assert not list(Path(run_dir).rglob("events.out.tfevents.*"))  # tracking.tensorboard is off: no event files


def test_members_whose_step0_models_agree_share_one_step0_key_and_no_others_do(decoder):
    """The step-0 scores are computed once per step-0 model: SK-Prefix with the verbalizer starts as the
    model reading its wording whatever its rank or seed; a wording, m or a seeded linear head makes
    another model, and so does a step of training."""
    from skray.methods.packed import step0_key

    def key(seed=1, **spec):
        torch.manual_seed(seed)
        base = {"kind": "sk_prefix", "wording": "is it good?", "prefix_length": 3, "adapter_rank": 4}
        cfg = MethodConfig(label_words=WORDS, **(base | spec))
        return step0_key(build_model(decoder, cfg, LABELS))

    same = key()
    assert key(adapter_rank=2) == same
    assert key(seed=7) == same
    assert key(wording="the sentiment?") != same
    assert key(prefix_length=4) != same
    assert key(head="linear") != key(head="linear", seed=7)
    model = _member(decoder, MEMBERS[0][0])
    before = step0_key(model)
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).add_(0.1)
    assert step0_key(model) != before


@pytest.mark.slow
def test_a_packed_slot_at_zero3_holds_the_backbone_partitioned_and_trains_each_member_as_at_zero2(
    ray_cluster, tiny_experiment
):
    """A compare packed at ZeRO 3 with the backbone's partitions offloaded (two workers): the slot builds
    the backbone partitioned once and its members train through DeepSpeed's gathering hooks, holding
    half the parameter bytes per worker; every member's scores at every step are the ones it gets in
    a slot at ZeRO 2, which holds the backbone whole."""
    from skray.config import parse_config
    from skray.run import run_experiment

    raw = tiny_experiment(train__max_steps=4, train__eval_every=2).model_dump()
    compare = {"methods": ["sk_prefix", "sk_prompt"], "seeds": [0]}
    runs = {}
    for name, zero in {"zero2": {"zero_stage": 2}, "zero3": {"zero_stage": 3, "offload": "params"}}.items():
        cfg = parse_config(raw | {"name": name, "compare": compare, "train": raw["train"] | zero})
        run_dir, _ = run_experiment(cfg, "compare", verbose=False)
        runs[name] = {
            p.parent.name: [json.loads(line) for line in p.read_text().splitlines()]
            for p in Path(run_dir).glob("train_m*/result.json")
        }
        reports = [r for member in runs[name].values() for r in member]
        assert len(runs[name]) == 2
        assert all(r["slot"] == 0 for r in reports)
    zero2 = sorted(runs["zero2"].values(), key=lambda r: r[0]["trainable_params"])
    zero3 = sorted(runs["zero3"].values(), key=lambda r: r[0]["trainable_params"])
    for solo_like, partitioned in zip(zero2, zero3, strict=True):
        assert [r["step"] for r in partitioned] == [0, 2, 4]
        assert all(r["zero_stage"] == 3 and r["offload"] == "params" for r in partitioned)
        held = partitioned[0]["param_bytes_per_worker"] / solo_like[0]["param_bytes_per_worker"]
        assert 0.45 < held < 0.55, held  # each of the two workers holds half of every weight
        for a, b in zip(solo_like, partitioned, strict=True):
            assert b["val_acc"] == a["val_acc"]
            assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
        assert partitioned[-1]["test_acc"] == solo_like[-1]["test_acc"]


def test_a_bf16_slot_keeps_its_backbone_in_bf16_and_its_members_as_fp32_masters(tiny_experiment):
    """In bf16 (real bf16 on this CPU, as a GPU slot runs) members joining a slot leave the shared
    backbone in bf16 (placing the first one cast it to fp32 for all) and keep fp32 masters of what
    they train; their passes run in bf16 like a solo trial's (a ZeRO-3 slot on a GPU crashed with
    fp32 prefix keys beside bf16 queries), and score as the member held in bf16 does."""
    from skray.devices import place

    backbone = Backbone(
        place(tiny_llama(), torch.device("cpu"), torch.bfloat16, frozen=torch.nn.Module()), minilm_tokenizer(), True
    )
    base = _settled(tiny_experiment(train__num_workers=1, train__micro_batch_size=2), "bf16")
    slot = _bare_slot(backbone, base)
    slot.cfg = base
    specs = [
        {"kind": "sk_prefix", "prefix_length": 3},
        {"kind": "sk_prompt", "prefix_length": 5, "head": "linear"},
        {"kind": "sk_prefix", "prefix_length": 4, "calibrated": True},
        {"kind": "prefix_tuning", "prefix_length": 2},
    ]
    slot.seats = []
    for i, spec in enumerate(specs):
        cfg = base.model_copy(update={"method": base.method.model_copy(update=spec)})
        member = slot._member(f"m0000000{i}", {}, cfg)
        member.step_bytes = slot._step_bytes(member)
        slot.seats.append(member)
    assert {p.dtype for p in backbone.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for m in slot.seats for p in m.params} == {torch.float32}
    slot._step()
    packed = slot._scores(slot.seats, "validation")
    for member, scores in zip(slot.seats, packed, strict=True):
        alone = copy.deepcopy(member.model)
        alone.backbone = backbone.model
        place(alone, torch.device("cpu"), torch.bfloat16, frozen=backbone.model)  # as a solo trial holds it
        solo = evaluate(
            alone,
            slot.data["validation"],
            batch_size=4,
            rank=0,
            world=1,
            device=torch.device("cpu"),
            label_names=slot.label_names,
        )
        assert scores["loss"] == pytest.approx(solo["loss"], abs=0.05)
    assert {p.dtype for p in backbone.model.parameters()} == {torch.bfloat16}


def test_a_members_ops_in_a_packed_pass_do_not_grow_with_depth():
    """A GPU waits on every small op the host issues, so what a member adds to a packed pass (its
    prefix, its share of the cache, its head: forward and backward) must not be a loop over layers:
    the ops one more SK-Prefix member adds are the same on a 2-layer and a 6-layer backbone. Views
    (metadata, no work launched) are not counted: the gradient of the layers' stacked weights comes
    back as one slice per layer's own weight."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += not func.is_view
            return func(*args, **(kwargs or {}))

    def ops(layers: int, members: int) -> int:
        llama = _llama(hidden_size=32, intermediate_size=64, num_hidden_layers=layers)
        backbone = Backbone(llama, minilm_tokenizer(), True)
        models = [_member(backbone, MEMBERS[0][0]) for _ in range(members)]
        data = _data(backbone)
        batch = take(data, torch.arange(4))
        with Count() as count:
            logits = packed_forward(backbone.model, models, [(batch["input_ids"], batch["attention_mask"])] * members)
            sum(out.sum() for out in logits).backward()
        return count.ops

    per_member = {layers: ops(layers, 3) - ops(layers, 2) for layers in (2, 6)}
    assert per_member[6] == per_member[2], per_member


@pytest.mark.slow
def test_tunes_loop_never_waits_on_a_busy_broker_and_a_runs_end_forwards_everything(ray_cluster, tmp_path):
    """Each turn of Tune's loop polls the broker for what happened to members (progress lines, trackers).
    A broker busy with a slot's ask or Optuna's sampling, or still starting, answers late: the loop goes
    on without its answer (waiting stalled the driver 3-5 s a time), and the run's end waits for it."""
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
