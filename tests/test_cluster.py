"""From laptop to cluster: cluster.yaml passes Ray's own validation; `ray job submit` runs a sweep."""

import contextlib
import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from skray import load_results
from tests.local_ray import assert_loopback_only, docs_ray_start_head, listening

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent


def test_cluster_yaml_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(cfg)))
    gpu_types = [
        t for t in cfg["available_node_types"].values() if t["node_config"]["InstanceType"].startswith(("g5", "p4d"))
    ]
    assert gpu_types
    assert all(t["min_workers"] == 0 for t in gpu_types)
    assert all(t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for t in gpu_types)
    typo = copy.deepcopy(cfg)
    typo["available_node_types"]["head"]["min_workrs"] = 1
    with pytest.raises(Exception, match="min_workrs"):
        validate_config(prepare_config(typo))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_job_submit_to_a_local_head_with_token_auth(tmp_path, tiny_llama_dir):
    """The docs' path: generate a token, the docs' `ray start --head` line as written there (plus free
    ports and its own temp dir), `ray job submit --working-dir .`, results on disk; every socket the head
    listens on is on loopback."""
    assigned, args = docs_ray_start_head()
    home = tmp_path / "home"  # a private ~/.ray/auth_token, never the user's
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "RAY_AUTH_MODE": "token",
        **assigned,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "SKRAY_CACHE": os.environ.get("SKRAY_CACHE", str(Path.home() / ".cache" / "skray")),
    }
    subprocess.run([BIN / "ray", "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    dashboard = _free_port()
    temp_dir = tempfile.mkdtemp(
        prefix="ray", dir="/tmp"
    )  # own session files: nothing left in /tmp/ray for others to find
    head = subprocess.Popen(
        [
            BIN / "ray",
            *args,
            "--block",
            f"--port={_free_port()}",
            f"--dashboard-port={dashboard}",
            # the job agent's port: Ray's default is taken where another Ray runs (the other tests' own)
            f"--dashboard-agent-listen-port={_free_port()}",
            "--include-dashboard=true",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        storage = tmp_path / "results"
        submit = [
            BIN / "ray",
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{dashboard}",
            "--working-dir",
            str(ROOT),
            "--",
            "skray",
            "tune",
            "experiments/quickstart.yaml",
            "--set",
            f"backbone.name={tiny_llama_dir}",
            "--set",
            f"storage_path={storage}",
            "--set",
            "search.num_trials=1",  # the job's path is under test here; several trials and workers: test_ray_runs
            "--set",
            "train.num_workers=1",
            "--set",
            "train.max_steps=2",
            "--set",
            "train.eval_every=2",
            "--set",
            "data.max_train_samples=32",
            "--set",
            "data.max_eval_samples=16",
            "--set",
            "data.max_test_samples=16",
            "--set",
            "method.label_words={fresh: ' good', rotten: ' bad'}",
        ]
        not_up_yet = ("Connection refused", "Failed to connect", "No available agent to submit job")
        for _ in range(30):  # the dashboard's job API, then its job agent, come up seconds after the head
            proc = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
            if not any(line in proc.stdout + proc.stderr for line in not_up_yet):
                break
            time.sleep(2)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "succeeded" in proc.stdout + proc.stderr
        (run_dir,) = storage.iterdir()
        table = load_results(run_dir)
        assert len(table) == 1
        assert set(table.status) == {"completed"}
        assert (run_dir / "results.parquet").exists()
        sockets = listening(head.pid)
    finally:
        _stop_group(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
    leftovers = subprocess.run(
        ["pgrep", "-f", f"dashboard-port={dashboard}|--dashboard_port={dashboard}"], capture_output=True, text=True
    ).stdout
    assert not leftovers.strip(), "the head started by this test is still running"
    assert_loopback_only(sockets)


def _stop_group(head: subprocess.Popen, grace: float = 5) -> None:
    """Stop the head and every process it started (its own session): SIGTERM, then SIGKILL after
    ``grace`` seconds. A SIGTERMed raylet waits out its 30 s shutdown timeout before it exits; this
    throwaway head's state need not outlive the test."""
    os.killpg(head.pid, signal.SIGTERM)
    _wait_gone(head.pid, grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)
    head.wait(timeout=60)
    _wait_gone(head.pid, 30)


def _wait_gone(group: int, seconds: float) -> None:
    """Wait up to ``seconds`` until no process of the process group ``group`` runs (zombies aside)."""
    deadline = time.time() + seconds
    while time.time() < deadline and any(_in_group(p, group) for p in psutil.process_iter(["status"])):
        time.sleep(0.2)


def _in_group(proc: psutil.Process, group: int) -> bool:
    with contextlib.suppress(psutil.Error, ProcessLookupError):
        return os.getpgid(proc.pid) == group and proc.info["status"] != psutil.STATUS_ZOMBIE
    return False
