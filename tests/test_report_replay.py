"""A restored trial sends again the reports its checkpoint kept (the driver may have died before
logging them), and every receiver takes each step once: result.json, Ray Train's callback into Tune,
the Optuna searcher, ASHA's rungs. No Ray cluster: the pieces as Ray drives them."""

import json
import os
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from skray.search import ReplayFilter, TrialReports
from skray.storage import read_reports
from skray.train.checkpoint import REPLAYED, RunState

os.environ.setdefault("DS_ACCELERATOR", "cpu")

# What a run of 4 steps, evaluated every 2, reported: the zero-shot step (no train loss yet) and the final.
KEPT = [
    {"step": 0, "best_val_acc": 0.5, "train_loss": float("nan"), "time_to_first_step_s": None, "resumed_from": 0},
    {"step": 2, "best_val_acc": 0.6, "train_loss": 0.7, "time_to_first_step_s": 1.5, "resumed_from": 0},
    {"step": 4, "best_val_acc": 0.7, "train_loss": 0.6, "time_to_first_step_s": 1.5, "resumed_from": 0}
    | {"test_acc": 0.65, "done": True},
]


def replayed(report: dict) -> dict:
    return report | {REPLAYED: True}


class Trial:  # what TrialReports reads of Tune's Trial (hashable, like Tune's)
    config = {"lr": 0.1}

    def __init__(self, tmp_path: Path) -> None:
        self.local_path = str(tmp_path / "staging")
        self.storage = SimpleNamespace(trial_dir_name="run_trial_x")

    def init_local_path(self) -> None:
        Path(self.local_path).mkdir(exist_ok=True)


def test_the_checkpoint_keeps_every_report_its_run_made(one_rank, decoder, tmp_path):
    """The reports travel inside the checkpoint, in DeepSpeed's client state and in the JSON read before
    an engine exists, NaN and None included."""
    from ray.train import Checkpoint

    from skray.config import MethodConfig, TrainConfig
    from skray.methods import build_model
    from skray.train.checkpoint import read_resume_state, read_run_state, write_resume_state
    from skray.train.deepspeed import build_engine, gather_trainable

    model = build_model(decoder, MethodConfig(kind="sk_prompt", head="linear", prefix_length=2), ["a", "b"])
    engine = build_engine(model, TrainConfig(zero_stage=0, lr=1e-3, max_steps=4))
    state = RunState(step=4, reports=KEPT)
    write_resume_state(engine, tmp_path, state, gather_trainable(engine), {"step": 4})

    restored, _ = read_resume_state(engine, tmp_path)
    assert json.dumps(restored.reports) == json.dumps(KEPT)  # NaN != NaN: compared as written
    assert json.dumps(read_run_state(Checkpoint.from_directory(str(tmp_path))).reports) == json.dumps(KEPT)
    assert RunState(**{k: v for k, v in asdict(state).items() if k != "reports"}).reports == []  # older checkpoints


def _recipe(tiny_experiment, state: RunState):
    """A worker's recipe as ``setup`` leaves it, without the model: enough for reports and replays."""
    from skray.train.recipe import SKTuningRecipe

    cfg = tiny_experiment(train__num_workers=1, train__max_steps=4, train__eval_every=2)
    recipe = SKTuningRecipe(cfg)
    recipe.state, recipe.t, recipe.rank, recipe.world = state, cfg.train, 0, 1
    recipe.data = {"train": {"labels": torch.zeros(8, dtype=torch.long)}}
    recipe.label_names, recipe.key, recipe.best, recipe.engine = ["neg", "pos"], "acc", {}, None
    return recipe


def test_each_report_is_kept_in_the_checkpoint_it_comes_with(tiny_experiment, monkeypatch):
    """The checkpoint written for a report holds that report (its own included, as it was made), so the
    latest checkpoint can send again whatever the driver lost."""
    import ray.train

    import skray.train.checkpoint

    written, sent = [], []
    monkeypatch.setattr(
        skray.train.checkpoint, "write_resume_state", lambda e, d, s, b, m: written.append(asdict(s)) or 123
    )
    monkeypatch.setattr(ray.train, "report", lambda metrics, checkpoint=None: sent.append(metrics))
    recipe = _recipe(tiny_experiment, RunState())
    for report in KEPT[:2]:
        recipe._checkpoint_and_report(dict(report))
    assert [w["reports"] for w in written] == [KEPT[:1], KEPT[:2]]
    assert [m["checkpoint_bytes"] for m in sent] == [123, 123]


@pytest.mark.parametrize("restored_at", [2, 4])
def test_a_restored_run_sends_again_what_its_checkpoint_kept_the_final_report_too(
    tiny_experiment, monkeypatch, tmp_path, restored_at
):
    """Every kept report, in order, marked, without a checkpoint (the restored one is registered), with
    the restored weights' size; at the last step nothing else is left to do, and the final report (done,
    with test scores) reaches Tune: the trial ends completed, not on a stale result."""
    import ray.train

    (tmp_path / "adapter.safetensors").write_bytes(b"x" * 321)
    sent = []
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint.from_directory(str(tmp_path)))
    monkeypatch.setattr(ray.train, "report", lambda metrics, checkpoint=None: sent.append((metrics, checkpoint)))
    kept = [r for r in KEPT if r["step"] <= restored_at]
    recipe = _recipe(tiny_experiment, RunState(step=restored_at, reports=kept, time_to_first_step_s=1.5))
    recipe.restored = True
    steps_left = []
    monkeypatch.setattr(recipe, "_step", lambda batches: steps_left.append(1) or 0)
    monkeypatch.setattr(recipe, "evaluate_and_report", lambda step, final=False: steps_left.append(step))

    recipe.train()
    assert [m for m, _ in sent] == [replayed(r) | {"checkpoint_bytes": 321} for r in kept]
    assert all(c is None for _, c in sent)
    assert steps_left == ([] if restored_at == 4 else [1, 1, 4])  # steps 3 and 4, then the final evaluation


def test_result_json_keeps_each_step_once_when_a_restored_trial_sends_it_again(tmp_path):
    """A new driver, after the old one logged steps 0 and 2 and died: the re-sent 0 and 2 are dropped
    (their lines stay as the old driver wrote them), the lost 4 is logged; a re-sent step that arrives
    twice (in flight when the workers restarted) is logged once."""
    trial, path = Trial(tmp_path), str(tmp_path / "run" / "run_trial_x" / "result.json")
    first = TrialReports(str(tmp_path / "run"))
    for report in KEPT[:2]:
        first.log_trial_result(1, trial, report | {"timestamp": 1})
    before = Path(path).read_text()

    resumed = TrialReports(str(tmp_path / "run"))
    for report in KEPT:
        resumed.log_trial_result(1, trial, replayed(report) | {"timestamp": 2})
    assert Path(path).read_text().startswith(before)
    assert [(r["step"], r["timestamp"]) for r in read_reports(path)] == [(0, 1), (2, 1), (4, 2)]
    resumed.log_trial_result(1, trial, replayed(KEPT[2]) | {"timestamp": 3})
    assert [(r["step"], r["timestamp"]) for r in read_reports(path)] == [(0, 1), (2, 1), (4, 2)]


def test_ray_trains_callback_passes_on_only_the_resent_reports_the_driver_did_not_log(tmp_path):
    """In Ray Train's controller, before Tune's scheduler and searcher (restored from an older save than
    the log) could judge a logged step again: re-sent 0 and 2 are dropped, the lost final report and
    reports made now go on."""
    logged = tmp_path / "result.json"
    logged.write_text("".join(json.dumps(r) + "\n" for r in KEPT[:2]))
    queue = SimpleNamespace(items=[])
    queue.put = queue.items.append
    callback = ReplayFilter.__new__(ReplayFilter)  # TuneReportCallback() itself wants a Tune session
    callback.logged, callback._training_actor_item_queue = str(logged), queue

    for report in [*map(replayed, KEPT), {"step": 6}]:
        callback.after_report(None, [report], None)
    assert [r["step"] for r in queue.items] == [4, 6]
    callback.logged = str(tmp_path / "none.json")  # a trial whose driver logged nothing yet
    callback.after_report(None, [replayed(KEPT[0])], None)
    assert queue.items[-1]["step"] == 0


def test_the_searcher_tells_optuna_each_step_once_and_a_resent_final_completes_the_trial(tmp_path):
    """Restored from a save made after step 0: a re-sent 0 is skipped, a re-sent 2 (told after the save)
    changes nothing, and the final report sent again makes the trial COMPLETE."""
    import warnings

    from optuna.trial import TrialState

    from skray.searcher import OptunaSearcher, Space

    space = Space(wordings=("a?", "b?"), prefix_length=(2, 4), lr=(1e-4, 1e-2))
    path, saved = tmp_path / "optuna.journal", str(tmp_path / "searcher.pkl")
    first = OptunaSearcher(space, [("best_val_acc", "max")], storage=path)
    first.suggest("t")
    first.on_trial_result("t", KEPT[0])
    first.save(saved)
    first.on_trial_result("t", KEPT[1])

    again = OptunaSearcher(space, [("best_val_acc", "max")], storage=path)
    again.restore(saved)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's own note that a step was reported already
        for report in [KEPT[0], KEPT[1] | {"best_val_acc": 0.1}]:
            again.on_trial_result("t", replayed(report))
    again.on_trial_complete("t", replayed(KEPT[2]))  # Tune's last result: ASHA stopped it at max_t
    (trial,) = again.study.trials
    assert trial.state == TrialState.COMPLETE
    assert trial.value == KEPT[2]["best_val_acc"]
    assert trial.intermediate_values == {0: 0.5, 2: 0.6}


def test_asha_counts_a_rung_once_when_a_step_is_sent_again():
    """A step sent again after its rung was recorded is not judged again (its first value stays); one the
    restored scheduler never saw is judged once; the final report sent again ends the trial."""
    from ray.tune.schedulers import TrialScheduler

    from skray.commands.tune import StepASHA

    scheduler = StepASHA(time_attr="step", max_t=8, grace_period=2, reduction_factor=2)
    scheduler.set_search_properties("best_val_acc", "max")
    strong, weak = SimpleNamespace(trial_id="strong"), SimpleNamespace(trial_id="weak")
    for t in (strong, weak):
        scheduler.on_trial_add(None, t)
    rungs = dict(scheduler._brackets[0]._rungs)
    assert scheduler.on_trial_result(None, strong, {"step": 2, "best_val_acc": 0.9}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, weak, {"step": 2, "best_val_acc": 0.95}) == TrialScheduler.CONTINUE
    # strong sends step 2 again, worse: below the rung's cutoff, but the rung holds its first value
    again = replayed({"step": 2, "best_val_acc": 0.1})
    assert scheduler.on_trial_result(None, strong, again) == TrialScheduler.CONTINUE
    assert rungs[2] == {"strong": 0.9, "weak": 0.95}
    assert (
        scheduler.on_trial_result(None, strong, replayed({"step": 4, "best_val_acc": 0.9})) == TrialScheduler.CONTINUE
    )
    assert rungs[4] == {"strong": 0.9}
    final = replayed({"step": 8, "best_val_acc": 0.9, "done": True})
    assert scheduler.on_trial_result(None, strong, final) == TrialScheduler.STOP


def test_a_trial_that_ended_before_the_driver_died_ends_again_without_training(tmp_path, monkeypatch):
    """Tune saves its trials' states now and then: a driver killed after logging the report ASHA stopped
    a trial at (Tune marks it done), before saving so, has the resumed run start the trial again. It does
    not train on: that report goes to Tune again (without Tune's own keys), and Tune ends the trial on it.
    A trial whose last report did not end it trains on from its checkpoint."""
    from ray import tune

    import skray.train.launch
    from skray.search import run_trial

    trial_dir = tmp_path / "run" / "run_trial_x"
    trial_dir.mkdir(parents=True)
    stopped = KEPT[1] | {"done": True, "training_iteration": 2, "config": {"lr": 0.1}, "trial_id": "x"}
    (trial_dir / "result.json").write_text(json.dumps(KEPT[0]) + "\n" + json.dumps(stopped) + "\n")
    sent, built = [], []
    context = SimpleNamespace(get_trial_dir=lambda: "/tmp/ray/working_dirs/run_trial_x/", get_trial_id=lambda: "x")
    monkeypatch.setattr(tune, "get_context", lambda: context)
    monkeypatch.setattr(tune, "report", sent.append)

    def fit() -> None:  # the trial trains to its end, and the driver logs its final report
        built.append("fit")
        with open(trial_dir / "result.json", "a") as log:
            log.write(json.dumps(stopped) + "\n")

    trainer = SimpleNamespace(fit=fit)
    monkeypatch.setattr(skray.train.launch, "build_trainer", lambda *args: built.append(args[4]) or trainer)
    run = {"params": {}, "experiment": {}, "command": "train", "cpus_per_worker": 1, "log_dir": None}

    run_trial(**run, storage_path=str(tmp_path / "run"))
    assert sent == [KEPT[1] | {"done": True, "trial_id": "x", REPLAYED: True}]
    assert built == []
    (trial_dir / "result.json").write_text(json.dumps(KEPT[0]) + "\n")
    monkeypatch.setattr("skray.search.trial_experiment", lambda *args: None)
    monkeypatch.setattr("skray.search.ReplayFilter", lambda logged: ("filter", logged))
    run_trial(**run, storage_path=str(tmp_path / "run"))
    assert built == [[("filter", str(trial_dir / "result.json"))], "fit"]
