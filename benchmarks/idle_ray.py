"""What an idle local Ray takes from a training loop beside it: overhead.py's ``plain_beside_ray`` rung
with the CPU time of Ray's own processes measured while the loop runs.

Per round: the plain loop with no Ray running, then skray's private Ray started and left to settle
(``--settle`` seconds: its dashboard, agents and prestarted workers past their start-up), then the
plain loop again beside it, with the CPU seconds every Ray process (GCS, raylet, dashboard, agents,
idle workers) used meanwhile, as a share of the machine's cores. Rounds interleave the two, so a drift
of the machine's speed hits both.

    python benchmarks/idle_ray.py [--rounds 3] [--steps 24] [--untimed 4] [--settle 60]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import pandas as pd
import psutil
import torch
from overhead import experiment, in_process


def ray_cpu_seconds() -> float:
    """CPU seconds used so far by this machine's Ray processes (this one left out)."""
    total = 0.0
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid != os.getpid() and "ray" in " ".join(proc.info["cmdline"] or []):
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--untimed", type=int, default=4)
    p.add_argument("--settle", type=float, default=60.0)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)  # what a lone skray run's worker gets
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # skray's engine module is imported; no accelerator probing
    import ray

    from skray.cluster import connect

    rows = []
    with tempfile.TemporaryDirectory(prefix="skray-idle-ray-") as storage:
        cfg = experiment(args.steps, args.untimed, storage)
        for r in range(args.rounds):
            ray.shutdown()
            alone = in_process(cfg, engine=False)
            connect(None, quiet=True)
            time.sleep(args.settle)
            used, start = ray_cpu_seconds(), time.time()
            beside = in_process(cfg, engine=False)
            share = (ray_cpu_seconds() - used) / (time.time() - start) / cores
            rows.append(
                {"round": r, "plain": alone, "beside_idle_ray": beside, "ratio": beside / alone, "ray_share": share}
            )
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows).set_index("round")
    print(f"\nsamples/s of the plain loop (overhead.py's), {cores} threads; ray_share: Ray's processes' CPU time")
    print("during the loop beside it, as a share of the machine's cores")
    print(table.to_markdown(floatfmt=".3f"))


if __name__ == "__main__":
    main()
