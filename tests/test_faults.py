"""Faults: a Ray Train worker killed mid-run restarts from its last checkpoint; a killed sweep driver
resumes when the same command runs again."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from skray.results import load_results
from skray.search import run_experiment
from tests.test_ray_runs import tiny_experiment

pytestmark = pytest.mark.slow


def _kill_a_worker_after_reports(storage: Path, reports: int, killed: list) -> None:
    deadline = time.time() + 300
    while time.time() < deadline:
        done = [p for p in storage.glob("*/*/result.json") if len(p.read_text().splitlines()) >= reports]
        if done:
            for proc in psutil.Process().children(recursive=True):  # this test's Ray only, not another on the machine
                if "RayTrainWorker" in " ".join(proc.cmdline()):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
                    return
        time.sleep(0.2)


def test_killed_worker_restarts_from_checkpoint_and_finishes(ray_cluster, tiny_llama_dir, tmp_path):
    cfg = tiny_experiment(tiny_llama_dir, tmp_path, train__max_steps=300, train__eval_every=50)
    killed: list = []
    killer = threading.Thread(target=_kill_a_worker_after_reports, args=(tmp_path, 3, killed), daemon=True)
    killer.start()
    run_dir, table = run_experiment(cfg, "train")
    killer.join(timeout=5)
    assert killed, "no worker was killed (the run ended first?)"
    reports = [json.loads(line) for line in next(Path(run_dir).glob("*/result.json")).read_text().splitlines()]
    assert table.iloc[0].status == "completed" and reports[-1]["step"] == 300
    resumed = [r for r in reports if r["resumed_from"] > 0]
    assert resumed, "the restarted group did not resume from a checkpoint"
    first = resumed[0]
    assert first["step"] == first["resumed_from"] + 50  # it went on from the checkpoint's step, not from 0
    assert 0 <= reports[-1]["test_accuracy"] <= 1


def _completed(storage: Path) -> dict[str, str]:
    """Trial dir -> its result.json text, for trials whose last report is the final one."""
    done = {}
    for path in storage.glob("*/run_trial_*/result.json"):
        lines = path.read_text().splitlines()
        if lines and "test_accuracy" in lines[-1]:
            done[path.parent.name] = path.read_text()
    return done


def test_killed_sweep_driver_resumes_without_rerunning_finished_trials(tiny_llama_dir, tmp_path):
    """`skray compare` killed (SIGKILL, with its local Ray) after a trial finished; the same command resumes the same run."""
    cfg = tiny_experiment(tiny_llama_dir, tmp_path, train__num_workers=1, train__max_steps=40, train__eval_every=10)
    raw = cfg.model_dump()
    raw["compare"] = {"methods": ["sk_prefix"], "seeds": [0, 1, 2]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "skray.cli", "compare", str(path)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not _completed(tmp_path) and proc.poll() is None:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _completed(tmp_path)
    assert 1 <= len(before) < 3, "the kill did not land between the first and the last trial"

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in again.stderr
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]  # the same run, not a new one
    after = _completed(tmp_path)
    assert len(after) == 3 and (run_dir / "finished").exists()
    for trial, text in before.items():
        assert after[trial] == text  # finished trials were kept as they were, not run again
    assert load_results(run_dir).status.eq("completed").all()
