"""Helpers for the tests that check what a local Ray listens on (test_local_ray, test_cluster)."""

from __future__ import annotations

import contextlib
import ipaddress
import shlex
from pathlib import Path

import psutil

ROOT = Path(__file__).parents[1]


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


def docs_ray_start_head() -> tuple[dict[str, str], list[str]]:
    """docs/cluster.md's local `ray start --head` line: its environment assignments and arguments."""
    (line,) = [ln for ln in (ROOT / "docs" / "cluster.md").read_text().splitlines() if "ray start --head" in ln]
    words = shlex.split(line)
    at = words.index("ray")
    return dict(w.split("=", 1) for w in words[:at]), words[at + 1 :]
