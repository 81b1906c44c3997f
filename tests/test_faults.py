"""Faults: a Ray Train worker killed mid-run restarts from its last checkpoint; a killed sweep driver
resumes when the same command runs again."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import psutil
import pytest
import yaml

from skray.results import load_results, trial_of
from skray.run import run_experiment

pytestmark = pytest.mark.slow


def _kill_a_worker_after_reports(storage: Path, reports: list[int], killed: list) -> None:
    """SIGKILL one Ray Train worker as soon as the trial has made each number of reports in turn."""
    deadline = time.time() + 300
    while reports and time.time() < deadline:
        if any(len(p.read_text().splitlines()) >= reports[0] for p in storage.glob("*/*/result.json")):
            children = psutil.Process().children(recursive=True)  # this test's Ray only, not another on the machine
            workers = [p for p in children if "RayTrainWorker" in _cmdline(p)]
            if workers:
                os.kill(workers[0].pid, signal.SIGKILL)
                killed.append(workers[0].pid)
                reports.pop(0)
        time.sleep(0.2)


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:  # it ended meanwhile
        return ""


def test_killed_worker_restarts_from_checkpoint_and_finishes(ray_cluster, tiny_experiment, tmp_path):
    """Two kills: right after the step-0 report (the restored group must not send it again, or ASHA
    sees one report too many) and mid-run (the group goes on from the checkpoint's step)."""
    cfg = tiny_experiment(train__max_steps=300, train__eval_every=50)
    killed: list = []
    killer = threading.Thread(target=_kill_a_worker_after_reports, args=(tmp_path, [1, 3], killed), daemon=True)
    killer.start()
    run_dir, table = run_experiment(cfg, "train")
    killer.join(timeout=5)
    assert len(killed) == 2, f"killed {len(killed)} workers (the run ended first?)"
    reports = [json.loads(line) for line in next(Path(run_dir).glob("*/result.json")).read_text().splitlines()]
    assert table.iloc[0].status == "completed"
    assert [r["step"] for r in reports] == list(
        range(0, 301, 50)
    )  # every step reported once, none again after a restart
    resumed = [r for r in reports if r["resumed_from"] > 0]
    assert resumed, "the restarted group did not resume from a checkpoint"
    first = resumed[0]
    assert first["step"] == first["resumed_from"] + 50  # it went on from the checkpoint's step, not from 0
    assert 0 <= reports[-1]["test_acc"] <= 1


def _finished(storage: Path) -> dict[str, str]:
    """Trial dir -> its result.json text, for trials whose last report is the final one."""
    done = {}
    for path in storage.glob("*/run_trial_*/result.json"):
        lines = path.read_text().splitlines()
        if lines and json.loads(lines[-1]).get("done"):  # step 0 has test scores too (the zero-shot model's)
            done[path.parent.name] = path.read_text()
    return done


def _reports(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]


def _last_step(result_json: Path) -> int | None:
    """The step of a trial's last logged report; None before its first, or while a write is under way."""
    try:
        return json.loads(result_json.read_text().splitlines()[-1])["step"]
    except (OSError, IndexError, json.JSONDecodeError):
        return None


def _registered(trial_dir: Path, step: int) -> bool:
    """Whether Ray Train's controller has registered the trial's checkpoint of ``step`` (its snapshot
    holds each checkpoint's report); the trial dir is run_trial_<id>_..., Ray Train's run train_<id>."""
    snapshot = trial_dir.parent / f"train_{trial_dir.name.split('_')[2]}" / "checkpoint_manager_snapshot.json"
    return snapshot.exists() and re.search(rf'"step": ?{step}[,}}]', snapshot.read_text()) is not None


def _wait(condition, what: str, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"waited {seconds:g} s for {what}"
        time.sleep(0.1)


def test_killed_tune_driver_resumes_trials_and_asha_counts_steps(tiny_experiment, tmp_path):
    """`skray tune` killed (SIGKILL, with its local Ray) while Ray Train has registered checkpoints whose
    reports the driver never logged, then run again: the same run goes on, finished trials are kept as
    they were, cut trials go on from their checkpoints and send again the reports the driver lost, the
    final one too, so every step is logged once; ASHA stops trials only at its rungs in training steps
    (after a resume Tune's training_iteration starts again at 1; the step does not).

    The race is made certain rather than waited for: the driver is frozen (SIGSTOP) right after it logs
    a trial's report of step 750, and killed once Ray Train has registered that trial's final checkpoint
    (step 1000): its report can only be lost. A trial running beside it usually loses one or two too."""
    cfg = tiny_experiment(train__num_workers=1, train__max_steps=1000, train__eval_every=250, search__pack=1)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump()))
    command = [sys.executable, "-m", "skray.cli", "tune", str(path)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # ASHA's rungs are 250 and 500: the first trial to reach one is never stopped there, so one reaches 750
        _wait(lambda: any(_last_step(p) == 750 for p in tmp_path.glob("*/run_trial_*/result.json")), "step 750")
        os.kill(proc.pid, signal.SIGSTOP)
        frozen = next(p.parent for p in tmp_path.glob("*/run_trial_*/result.json") if _last_step(p) == 750)
        _wait(lambda: _registered(frozen, 1000), "the frozen trial's final checkpoint")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _last_step(frozen / "result.json") == 750  # the final report was lost with the driver
    before = _finished(tmp_path)
    cut = {d: _reports(d) if (d / "result.json").exists() else [] for d in tmp_path.glob("*/run_trial_*")}
    cut = {d: reported for d, reported in cut.items() if d.name not in before}

    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in again.stderr
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]  # the same run, not a new one
    assert (run_dir / "finished").exists()
    table = load_results(run_dir)
    assert len(table) == 3
    assert set(table.status) <= {"completed", "early_stopped"}
    after = _finished(tmp_path)
    for trial, text in before.items():
        assert after[trial] == text  # finished trials were kept as they were, not run again
    # the frozen trial came back with no step left to train: it sent its final report again
    row = table.set_index("trial").loc[trial_of(frozen.name)]
    assert row.status == "completed", dict(row)
    assert 0 <= row.test_acc <= 1
    final = _reports(frozen)[-1]
    assert (final["step"], final["done"], final["replayed"]) == (1000, True, True)
    for trial_dir, reported in cut.items():
        if not trial_dir.exists():  # started just before the kill, after Tune's last save: unknown to the
            assert reported == []  # resumed run (its Optuna trial is told FAIL), its empty folder removed
            continue
        resumed = [r for r in _reports(trial_dir) if r["resumed_from"] > 0]
        if resumed:  # went on from its checkpoint, after sending again what the driver had lost
            assert resumed[0]["step"] == resumed[0]["resumed_from"] + 250, [r["step"] for r in _reports(trial_dir)]
    rungs = {250, 500}  # grace_period 1 evaluation = 250 steps, x reduction_factor 2, below max_steps 1000
    for trial_dir in run_dir.glob("run_trial_*"):
        reports = _reports(trial_dir)
        steps = [r["step"] for r in reports]
        assert steps == list(range(0, steps[-1] + 1, 250)), (trial_dir.name, steps)  # each step once, none lost
        if not reports[-1].get("done"):
            assert steps[-1] in rungs, (trial_dir.name, steps)  # stopped by ASHA at a rung of training steps
    # The Optuna study on disk went on too: each trial of the table once, in the state the table gives
    # it (a trial asked after the searcher's last checkpoint, which Tune never ran, is told FAIL).
    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run_dir / "optuna.journal"))
    )
    study = optuna.load_study(study_name=run_dir.name, storage=journal)
    told = [t for t in study.trials if t.state != optuna.trial.TrialState.FAIL]
    assert sorted(t.user_attrs["trial"] for t in told) == sorted(table.trial)
    states = {"completed": optuna.trial.TrialState.COMPLETE, "early_stopped": optuna.trial.TrialState.PRUNED}
    by_trial = {t.user_attrs["trial"]: t.state for t in told}
    assert all(by_trial[row.trial] == states[row.status] for row in table.itertuples())
