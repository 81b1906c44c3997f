"""Where skray's trials run: a Ray cluster it joins, or a private local Ray it starts."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import ray
import yaml
from ray._private import ray_constants

LOOPBACK = "127.0.0.1"


# Where `ray up` leaves the cluster YAML (node types' resources filled in) on the head node.
LAUNCHER_CONFIG = Path("~/ray_bootstrap_config.yaml")


@dataclass(frozen=True)
class Capacity:
    """What a run can plan with: the resources Ray has now, whether an autoscaler can add nodes, and
    the most GPUs its node types reach (None: an autoscaling cluster whose node types are unknown)."""

    resources: dict[str, float]
    grows: bool = False
    max_gpus: float | None = 0.0
    node_memory: tuple[float, ...] = ()  # Ray's ``memory`` resource of each live node (bytes for tasks)
    nodes: tuple[tuple[float, float], ...] = ()  # (CPUs, GPUs) of each live node

    @property
    def gpus(self) -> float | None:
        """GPUs the run may count on: those present, or those the autoscaler can add (None: unknown)."""
        now = self.resources.get("GPU", 0.0)
        if not self.grows:
            return now
        return None if self.max_gpus is None else max(now, self.max_gpus)

    @property
    def cpus_per_gpu(self) -> float:
        """Whole CPUs beside each GPU on every live GPU node (the smallest node's CPUs / GPUs; 0 without
        one). A GPU worker's bundle (its GPU and CPUs) must fit one node: the cluster's totals would
        count CPU-only nodes, and ask for more CPUs beside a GPU than any GPU node has."""
        return float(min((math.floor(cpus / gpus) for cpus, gpus in self.nodes if gpus > 0), default=0))


def connect(address: str | None, quiet: bool = False) -> bool:
    """Join the cluster at ``address`` or ``$RAY_ADDRESS``; otherwise start a private local Ray.

    Never Ray's implicit "find a running cluster": a stale /tmp/ray/ray_current_cluster left by
    a crashed `ray start` would make it wait on a dead head. Returns whether we joined a cluster
    (which ``capacity`` then asks whether it autoscales), as opposed to starting our own.
    ``quiet``: Ray's processes do not echo their output here, and Ray logs warnings only.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    output = {"log_to_driver": False, "logging_level": logging.WARNING} if quiet else {}
    if address:
        ray.init(address=address, **output)
        return True
    start_private_ray(**output)
    return False


def capacity(joined: bool) -> Capacity:
    """The connected Ray's capacity. A private Ray is fixed. A joined cluster autoscales when it has
    node types: registered with the GCS (autoscaler v2, KubeRay; what Ray Train also reads) or named
    in a v1 autoscaler's report. A `ray start` head without ``--autoscaling-config`` runs Ray's
    read-only autoscaler, one type per node it already has: fixed."""
    resources = ray.cluster_resources()
    live = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    per_node = {
        "node_memory": tuple(n.get("memory", 0.0) for n in live),
        "nodes": tuple((n.get("CPU", 0.0), n.get("GPU", 0.0)) for n in live),
    }
    if not joined:
        return Capacity(resources, **per_node)
    from ray._private.state import state
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.experimental.internal_kv import _internal_kv_get

    node_types = state.get_max_resources_from_cluster_config()
    if node_types is not None:
        return Capacity(resources, grows=True, max_gpus=float(node_types.get("GPU", 0)), **per_node)
    status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    mapping = (json.loads(status).get("autoscaler_report") or {}).get("node_type_mapping") if status else None
    if not mapping or all(t == format_readonly_node_type(node) for node, t in mapping.items()):
        return Capacity(resources, **per_node)
    return Capacity(resources, grows=True, max_gpus=launcher_gpus(LAUNCHER_CONFIG.expanduser()), **per_node)


def remove_orphaned_placement_groups() -> list[str]:
    """Remove the placement groups of this job whose creator, an actor, has died; return their ids.

    Ray keeps an actor's placement group until both the actor and its job have died
    (ray-project/ray#65881), and Ray Train's controller, ended by Tune while it retried a worker group
    whose workers had just died with it, created one after its own death was recorded, which Ray's
    record of the group then never notes, and which Train's cleaner never heard of (ray-project/ray#58515
    cleans only registered groups): it held a CPU for the rest of the sweep, and the next trial waited on
    it for ever. Ray's public placement-group table does not say who made a group, so this reads the
    GCS's own records."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup

    job = ray.get_runtime_context().get_job_id()
    removed = []
    for raw in state._global_state_accessor.get_placement_group_table():
        pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
        if orphaned(pg, job, lambda actor: state.actor_table(actor).get("State")):
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
            removed.append(pg.placement_group_id.hex())
    return removed


def orphaned(pg: Any, job: str, actor_state: Callable[[str], str | None]) -> bool:
    """Whether the GCS's record ``pg`` (a ``PlacementGroupTableData``) is a live group of ``job`` made by
    an actor that ``actor_state`` (the actor table's state of an actor id, None where it has none) says
    is dead. Groups of other jobs, detached ones, the driver's and a live actor's are not."""
    from ray.core.generated import gcs_pb2

    if pg.state == gcs_pb2.PlacementGroupTableData.REMOVED or pg.is_detached or pg.creator_job_id.hex() != job:
        return False
    creator = ray.ActorID(pg.creator_actor_id)
    if creator.is_nil():  # the driver's (Tune's trial groups): its record reads "actor dead" too
        return False
    return pg.creator_actor_dead or actor_state(creator.hex()) in (None, "DEAD")


def launcher_gpus(path: Path) -> float | None:
    """The most GPUs a `ray up` cluster reaches, from its node types (GPUs x max_workers each); None
    when the file is absent (the driver is not on the head) or names no resources for its types."""
    if not path.is_file():
        return None
    config = yaml.safe_load(path.read_text()) or {}
    head = config.get("head_node_type")
    types = config.get("available_node_types") or {}
    workers = {name: t for name, t in types.items() if name != head}
    if not workers or not all(t.get("resources") for t in workers.values()):
        return None  # `resources: {}` not filled in (the launcher fills them for AWS and GCP): unknown
    gpus = types.get(head, {}).get("resources", {}).get("GPU", 0)
    return float(gpus + sum(t["resources"].get("GPU", 0) * t.get("max_workers", 0) for t in workers.values()))


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

    Its workers run at this process's priority (``RAY_worker_niceness=0``, unless set): Ray starts
    them 15 nicer than its own processes, so that anything else on the machine came first; the
    workers are the run itself, and on a 2-core machine a training worker then lost most of its
    CPU to any other busy process (docs/SCALING.md, framework overhead).
    """
    port = _free_loopback_port()
    lo = _loopback_interface()
    pinned = {
        "RAY_GCS_SERVER_PORT": str(port),
        "RAY_ADDRESS": f"{LOOPBACK}:{port}",
        "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", lo),
        "NCCL_SOCKET_IFNAME": os.environ.get("NCCL_SOCKET_IFNAME", lo),
        "RAY_worker_niceness": os.environ.get("RAY_worker_niceness", "0"),
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
