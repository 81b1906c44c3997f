"""skray's own local Ray is reachable from this machine only (the docs' `ray start --head`: test_cluster)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.local_ray import assert_loopback_only, listening

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent

# Starts skray's private Ray, runs a task on it, writes the result to argv[1], and keeps Ray up
# until its stdin closes, so that the test can list the sockets of its process tree meanwhile.
SKRAY_DRIVER = """
import sys
from pathlib import Path

import ray

from skray.cluster import connect

@ray.remote
def square(x):
    return x * x

connect(None)
Path(sys.argv[1]).write_text(str(ray.get(square.remote(7))))
sys.stdin.read()
ray.shutdown()
"""


def _private_env(home: Path) -> dict[str, str]:
    """No cluster to join, and Ray's auth token in a private home, never the user's."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float, log: Path) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the driver exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no result after {timeout}s:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    return path.read_text()


def test_skrays_private_ray_listens_on_loopback_only_and_runs_tasks(tmp_path):
    """`skray` without an address starts a Ray that nothing on the network can reach."""
    result, log = tmp_path / "result", tmp_path / "driver.log"
    with log.open("w") as err:
        driver = subprocess.Popen(
            [sys.executable, "-c", SKRAY_DRIVER, str(result)],
            cwd=ROOT,
            env=_private_env(tmp_path),
            stdin=subprocess.PIPE,
            stdout=err,
            stderr=err,
        )
    try:
        assert _wait_for(result, driver, 300, log) == "49"
        sockets = listening(driver.pid)
    finally:
        driver.stdin.close()  # the driver shuts its Ray down and exits
        driver.wait(timeout=120)
    assert_loopback_only(sockets)
