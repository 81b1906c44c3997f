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

from skray.results import load_results
from skray.search import run_experiment

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


def test_killed_tune_driver_resumes_trials_and_asha_counts_steps(tiny_experiment, tmp_path):
    """`skray tune` killed (SIGKILL, with its local Ray) right after a trial's first evaluation, then
    run again: the same run goes on, finished trials are kept as they were, cut trials go on from their
    checkpoints, no step is reported twice, and ASHA stops trials only at its rungs in training steps
    (after a resume Tune's training_iteration starts again at 1; the step does not)."""
    cfg = tiny_experiment(train__num_workers=1, train__max_steps=1000, train__eval_every=250)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump()))
    command = [sys.executable, "-m", "skray.cli", "tune", str(path)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    # Ray Train's own record of a trial's checkpoints shows step 250 before Tune's result.json does.
    def checkpointed() -> list[str]:
        snapshots = tmp_path.glob("*/train_*/checkpoint_manager_snapshot.json")
        return [
            p.parent.name.removeprefix("train_") for p in snapshots if re.search(r'"step": ?250[,}]', p.read_text())
        ]

    deadline = time.time() + 300
    while time.time() < deadline and not checkpointed() and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _finished(tmp_path)
    cut = [d for d in tmp_path.glob("*/run_trial_*") if d.name.split("_")[2] in checkpointed() and d.name not in before]
    assert cut, "the kill did not land while a trial was between its evaluations"

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
    for trial_dir in cut:
        reports = _reports(trial_dir)
        if reports[-1]["step"] > 250:
            assert reports[-1]["resumed_from"] == 250, [r["step"] for r in reports]  # went on from its checkpoint
    rungs = {250, 500}  # grace_period 1 evaluation = 250 steps, x reduction_factor 2, below max_steps 1000
    for trial_dir in run_dir.glob("run_trial_*"):
        reports = _reports(trial_dir)
        steps = [r["step"] for r in reports]
        assert steps == sorted(set(steps)), (trial_dir.name, steps)  # no step twice, no restart from 0
        assert steps[0] == 0, (trial_dir.name, steps)  # the reports before the resume were kept
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
