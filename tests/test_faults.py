"""Faults: a Ray Train worker killed mid-run; the group restarts from the last checkpoint and finishes."""
import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

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
