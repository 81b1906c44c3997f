"""Where skray's trials run: a Ray cluster it joins, or a private local Ray it starts."""
from __future__ import annotations

import os
import socket

import ray


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
    start_private_ray(dashboard_host="127.0.0.1")  # dashboard on loopback only
    return False


def start_private_ray(**init_kwargs) -> None:
    """A new local Ray whose own processes know its address, even beside other Rays on the machine.

    Ray Train's placement-group cleaner (and anything else using Ray's state API from inside the
    cluster) looks the cluster up by ``$RAY_ADDRESS`` or, without it, by scanning the machine; with
    two Rays running it finds both, dies, and the finished run's placement group is never freed, so
    the next run in the session waits for workers forever. The GCS port is chosen here and both
    variables are set while Ray starts (its processes inherit them), then restored for this process.
    """
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    pinned = {"RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": f"{ray.util.get_node_ip_address()}:{port}"}
    saved = {k: os.environ.get(k) for k in pinned}
    os.environ.update(pinned)
    try:
        ray.init(address="local", **init_kwargs)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
