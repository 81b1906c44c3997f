"""A local Ray, skray's own or the docs' `ray start --head`, is reachable from this machine only."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
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
JOIN_AND_RUN = """
import sys

import ray

@ray.remote
def square(x):
    return x * x

ray.init(address=sys.argv[1])
print(ray.get(square.remote(7)))
"""


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # gRPC's dual-stack sockets show ::ffff:127.0.0.1
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def _listening(root: int) -> list[tuple[str, str, int]]:
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


def _assert_loopback_only(listening: list[tuple[str, str, int]]) -> None:
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
        listening = _listening(driver.pid)
    finally:
        driver.stdin.close()  # the driver shuts its Ray down and exits
        driver.wait(timeout=120)
    _assert_loopback_only(listening)


def _docs_ray_start_head() -> tuple[dict[str, str], list[str]]:
    """docs/cluster.md's local `ray start --head` line: its environment assignments and arguments."""
    (line,) = [ln for ln in (ROOT / "docs" / "cluster.md").read_text().splitlines() if "ray start --head" in ln]
    words = shlex.split(line)
    at = words.index("ray")
    return dict(w.split("=", 1) for w in words[:at]), words[at + 1 :]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_docs_ray_start_head_listens_on_loopback_only_and_runs_tasks(tmp_path):
    """The docs' local head, as written there (plus free ports and its own temp dir)."""
    assigned, args = _docs_ray_start_head()
    env = {**_private_env(tmp_path), **assigned, "RAY_AUTH_MODE": "token"}
    subprocess.run([BIN / "ray", "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    head = subprocess.Popen(
        [BIN / "ray", *args, "--block", f"--port={port}", f"--dashboard-port={_free_port()}", f"--temp-dir={temp_dir}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        run = subprocess.run(
            [sys.executable, "-c", JOIN_AND_RUN, f"127.0.0.1:{port}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
        assert run.stdout.split()[-1] == "49", run.stdout[-2000:]
        listening = _listening(head.pid)
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops every process it started
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)
    _assert_loopback_only(listening)
