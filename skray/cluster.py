"""Where skray's trials run: a Ray cluster it joins, or a private local Ray it starts."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from unittest import mock

import ray
from ray._private import ray_constants

LOOPBACK = "127.0.0.1"


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` or ``$RAY_ADDRESS``; otherwise start a private local Ray.

    Never Ray's implicit "find a running cluster": a stale /tmp/ray/ray_current_cluster left by
    a crashed `ray start` would make it wait on a dead head. Returns whether we joined a cluster
    that may grow (an autoscaler can add nodes), as opposed to a fixed one.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return True
    start_private_ray()
    return False


def start_private_ray(**init_kwargs) -> None:
    """A new local Ray that listens on 127.0.0.1 only and whose own processes know its address.

    Loopback: the GCS, raylet, workers, agents and dashboard bind to the node IP, which Ray keeps
    at 127.0.0.1 only in its single-node mode (see ``_single_node_mode``); gloo and NCCL, which Ray
    Train's workers use, are pinned to the loopback interface unless the user chose one.

    Its address: Ray Train's placement-group cleaner (and anything else using Ray's state API from
    inside the cluster) looks the cluster up by ``$RAY_ADDRESS`` or, without it, by scanning the
    machine; with two Rays running it finds both, dies, and the finished run's placement group is
    never freed, so the next run in the session waits for workers forever. The GCS port is chosen
    here and these variables are set while Ray starts (its processes inherit them), then restored
    for this process.
    """
    port = _free_loopback_port()
    lo = _loopback_interface()
    pinned = {
        "RAY_GCS_SERVER_PORT": str(port),
        "RAY_ADDRESS": f"{LOOPBACK}:{port}",
        "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", lo),
        "NCCL_SOCKET_IFNAME": os.environ.get("NCCL_SOCKET_IFNAME", lo),
    }
    saved = {k: os.environ.get(k) for k in pinned}
    os.environ.update(pinned)
    try:
        with _single_node_mode():
            ray.init(address="local", _node_ip_address=LOOPBACK, dashboard_host=LOOPBACK, **init_kwargs)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _single_node_mode() -> contextlib.AbstractContextManager:
    """Ray's single-node mode (its default on macOS and Windows), where a node IP of 127.0.0.1 holds.

    Otherwise Ray swaps a loopback node IP for the machine's LAN address and its servers listen on
    every interface. Ray reads the switch (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) once, when it
    is imported, so for this process the constant is patched while Ray starts.
    """
    return mock.patch.object(ray_constants, "ENABLE_RAY_CLUSTER", False)


def _loopback_interface() -> str:
    """The loopback interface's name, for gloo's and NCCL's sockets."""
    return "lo0" if sys.platform == "darwin" else "lo"


def _free_loopback_port() -> int:
    """A free port for the GCS, chosen here so that ``$RAY_ADDRESS`` can name it before Ray starts."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]
