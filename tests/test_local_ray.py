"""A local Ray, skray's own or the docs' `ray start --head`, is reachable from this machine only."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

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

# Joins the Ray at argv[1] and runs a task there.


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # gRPC's dual-stack sockets show ::ffff:127.0.0.1
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def listening(root: int) -> list[tuple[str, str, int]]:
    """(process, address, port) of every TCP socket listening in the process tree under ``root``."""
    parent = psutil.Process(root)
    found = []
    for proc in [parent, *parent.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            found += [
                (proc.name(), c.laddr.ip, c.laddr.port)
                for c in proc.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN
            ]
    return found


def assert_loopback_only(listening: list[tuple[str, str, int]]) -> None:
    names = {name for name, _, _ in listening}
    assert {"gcs_server", "raylet"} <= names, f"Ray's servers were not found: {sorted(listening)}"
    exposed = sorted(s for s in listening if not _is_loopback(s[1]))
    assert not exposed, f"listening beyond loopback: {exposed}\nall: {sorted(listening)}"


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


def docs_ray_start_head() -> tuple[dict[str, str], list[str]]:
    """docs/cluster.md's local `ray start --head` line: its environment assignments and arguments."""
    (line,) = [ln for ln in (ROOT / "docs" / "cluster.md").read_text().splitlines() if "ray start --head" in ln]
    words = shlex.split(line)
    at = words.index("ray")
    return dict(w.split("=", 1) for w in words[:at]), words[at + 1 :]
