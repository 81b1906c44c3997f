"""A backbone too large for one worker's memory budget, trained by two: ZeRO 3 with partitioned loading.

A Llama of TinyLlama-1.1B's shape (random weights, fp32 on CPU: 4.1 GiB) is SK-Prefix-trained by
`skray train` (Ray Train + DeepSpeed) at four points: ZeRO 3 (each worker loads only its partition)
on 1 and 2 workers, and ZeRO 2 on 2 (each worker loads it whole, as ZeRO 3 did before partitioned
loading); then the same ZeRO-3 runs with a budget per worker, `train.memory_per_worker_gb` (Ray
reserves it, and the preflight refuses a run whose workers need more before any of them starts),
below what one worker holding the whole backbone needs (4.1 GiB of weights + its runtime): 1 worker
is refused, 2 train. Per point: per-worker
peak memory from process start (peak RSS), the estimate `zero_stage: auto` works from, the most
parameter bytes a worker held, and the seconds per training step.

    .venv/bin/python benchmarks/large_backbone.py            # about 25 minutes on 2 CPU cores
    .venv/bin/python benchmarks/large_backbone.py --budget 5 # the budget in GiB (default 5)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu_check import llama  # noqa: E402

from skray.config import parse_config  # noqa: E402
from skray.errors import SkrayError  # noqa: E402
from skray.run import run_experiment  # noqa: E402

# (zero stage, workers, memory budget per worker or None): the ratio points, then the budget.
POINTS = [(3, 1, None), (3, 2, None), (2, 2, None), (3, 1, "budget"), (3, 2, "budget")]


def experiment(backbone: str, storage: str, stage: int, workers: int, budget: float | None) -> dict:
    return {
        "name": f"large-z{stage}-w{workers}-{budget}",
        "storage_path": storage,
        "backbone": {"name": backbone},
        "data": {"max_length": 48, "max_train_samples": 64, "max_eval_samples": 8, "max_test_samples": 8},
        "method": {"kind": "sk_prefix", "prefix_length": 8, "adapter_rank": 4},
        "train": {
            "num_workers": workers,
            "zero_stage": stage,
            "use_gpu": False,
            "precision": "fp32",
            "micro_batch_size": 1,
            "eval_batch_size": 4,
            "max_steps": 3,
            "eval_every": 3,
            "untimed_steps": 1,
            "max_failures": 0,
            "memory_per_worker_gb": budget,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=5.0, help="train.memory_per_worker_gb (GiB)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="skray-large-") as tmp:
        model, tokenizer = llama("1b")
        backbone = Path(tmp) / "llama-1b"
        model.save_pretrained(backbone)
        tokenizer.save_pretrained(backbone)
        params = model.num_parameters()
        del model
        for stage, workers, cap in POINTS:
            budget = args.budget if cap else None
            row = {"zero_stage": stage, "workers": workers, "budget_GiB": budget}
            cfg = parse_config(experiment(str(backbone), tmp, stage, workers, budget))
            try:
                run_dir, table = run_experiment(cfg, "train")
            except SkrayError as err:  # the preflight's refusal, before any worker started
                rows.append(row | {"status": "refused", "note": str(err)[:110]})
                continue
            last = json.loads(next(Path(run_dir).glob("*/result.json")).read_text().splitlines()[-1])
            rows.append(
                row
                | {
                    "status": table.iloc[0]["status"],
                    "peak_mem_GiB": last["peak_mem_mb"] / 1024,
                    "est_mem_GiB": last["est_mem_mb"] / 1024,
                    "peak_param_GiB": last["peak_param_bytes_per_worker"] / 2**30,
                    "held_param_GiB": last["param_bytes_per_worker"] / 2**30,
                    "s_per_step": last["train_s"] / last["step"],
                }
            )
    table = pd.DataFrame(rows)
    print(f"Llama {params / 1e9:.2f}B (TinyLlama-1.1B shape), fp32, SK-Prefix m = 8, 2 CPU workers at most\n")
    print(table.to_markdown(index=False, floatfmt=".3g"))
    done = table[(table["status"] == "completed") & table["budget_GiB"].isna()].set_index(["zero_stage", "workers"])
    if (3, 1) in done.index:
        for stage in (3, 2):
            if (stage, 2) in done.index:
                ratio = done.loc[(stage, 2), "peak_mem_GiB"] / done.loc[(3, 1), "peak_mem_GiB"]
                print(f"\npeak per worker, ZeRO {stage} at 2 workers / ZeRO 3 at 1 worker = {ratio:.2f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
