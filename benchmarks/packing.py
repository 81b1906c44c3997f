"""Packed trials against solo ones, side by side in one run: the same configurations of the quickstart's
space (a seeded random sampler hands them out in the same order to every arm; no early stopping:
ASHA's first rung is the last step), trained solo (``search.pack 1``, today's way) and packed 2, 4 and
8 to a slot, streaming on (``auto``: the seats a slot's measured step time pays for, at most 32).

    python benchmarks/packing.py [--configs 8] [--steps 48] [--packs 1 2 4 8 auto] [--workers 2] [--seeds 0]
                                 [--set train.zero_stage=3 --set train.offload=params ...]

Per arm: the sweep's wall time (``run_experiment``, one local Ray for all arms), configurations per
hour and its ratio to solo, the peak RSS of one worker, the parameter bytes one worker holds (at
ZeRO 3 its partitions), and each configuration's test accuracy beside
its solo run's (the largest gap, and whether the best configuration by validation is the same one).
The floor is the sweep's compute with no start-up at all: the solo arm's own training steps and
evaluations (``train_s`` + ``eval_s`` summed over its trials, at the speed it measured), which no
arm can beat without computing less. Also per packed arm: where the slot's time went (set-up, steps,
evaluation, writes) and the seats it kept, from the slot's last report.

With several ``--seeds`` (``train.seed``: each member's initialisation and data order; the sampler
keeps its own seed, so every seed runs the same configurations), every arm runs once per seed, and a
last table sets each configuration's packed-to-solo gap at each seed beside the spread of its solo
test accuracy over the seeds: whether packing moves a result by more than a seed does.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

QUICKSTART = Path(__file__).parents[1] / "experiments" / "quickstart.yaml"
KEY = ["wording", "prefix_length", "lr"]


def experiment(
    storage: str,
    pack: int | str,
    configs: int,
    steps: int,
    workers: int,
    seed: int = 0,
    overrides: tuple[str, ...] = (),
):
    from skray.config import load_config

    return load_config(
        QUICKSTART,
        [
            f"storage_path={storage}",
            f"name=pack{pack}-seed{seed}",
            f"train.seed={seed}",
            f"train.num_workers={workers}",
            f"train.max_steps={steps}",
            f"train.eval_every={max(1, steps // 4)}",
            f"search.num_trials={configs}",
            "search.sampler=random",
            "search.grace_period=4",  # 4 evaluations: ASHA's only rung is the last step, nothing stops early
            f"search.pack={pack}",
            *overrides,
        ],
    )


def _last_reports(run_dir: Path, pattern: str) -> list[dict]:
    found = []
    for path in run_dir.glob(pattern):
        lines = path.read_text().splitlines()
        if lines:
            found.append(json.loads(lines[-1]))
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", type=int, default=8)
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--packs", type=lambda v: v if v == "auto" else int(v), nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override for every arm")
    args = p.parse_args()

    from skray.cluster import start_private_ray

    start_private_ray()
    spread = []
    for seed in args.seeds:
        if len(args.seeds) > 1:
            print(f"\n== train.seed {seed}", flush=True)
        spread.append(compare_arms(args, seed))
    if len(args.seeds) > 1:
        seed_spread(pd.concat(spread), args.packs[0])


def compare_arms(args: argparse.Namespace, seed: int) -> pd.DataFrame:
    """The arms at one ``train.seed``, their tables printed; returns each configuration's test accuracy
    per arm (pack) at this seed."""
    from skray.run import run_experiment

    rows, tables, slots = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="skray-packing-") as storage:
        for pack in args.packs:
            cfg = experiment(storage, pack, args.configs, args.steps, args.workers, seed, tuple(args.set))
            start = time.perf_counter()
            run_dir, table = run_experiment(cfg, "tune", verbose=False)
            wall = time.perf_counter() - start
            tables[pack] = table
            reports = _last_reports(Path(run_dir), "*/result.json")
            members = [r for r in reports if "best_val_acc" in r]
            slots[pack] = [r for r in reports if "members" in r]
            rows.append(
                {
                    "pack": pack,
                    "wall_s": wall,
                    "configs_per_h": args.configs / wall * 3600,
                    "peak_mem_mb": max(r["peak_mem_mb"] for r in members),
                    "param_mb": max(r["param_bytes_per_worker"] for r in members) / 2**20,
                    "compute_s": sum(r["train_s"] + r["eval_s"] for r in members),
                    "completed": int((table.status == "completed").sum()),
                }
            )
            print(f"pack {pack}: {wall:.0f} s", flush=True)
    out = pd.DataFrame(rows).set_index("pack")
    solo = tables[args.packs[0]].set_index(KEY)
    floor = out.compute_s.iloc[0]
    out["vs_solo"] = out.configs_per_h / out.configs_per_h.iloc[0]
    out["vs_floor"] = out.wall_s / floor
    gaps, same_best, per_config = [], [], []
    for pack in args.packs:
        t = tables[pack].set_index(KEY)
        both = t.join(solo, how="inner", lsuffix="", rsuffix="_solo")
        gaps.append(float((both.test_acc - both.test_acc_solo).abs().max()) if len(both) else float("nan"))
        same_best.append(tables[pack].iloc[0][KEY].tolist() == tables[args.packs[0]].iloc[0][KEY].tolist())
        shown = ["best_step", "best_step_solo", "best_val_acc", "best_val_acc_solo", "test_acc", "test_acc_solo"]
        per_config.append(both[[c for c in shown if c in both.columns]].assign(pack=pack))
    out["max_test_gap"] = gaps
    out["same_best"] = same_best
    print(f"\nfloor (the solo arm's steps and evaluations, no start-up): {floor:.0f} s")
    print(out.to_string(float_format=lambda v: f"{v:.3g}"))
    configs = pd.concat(per_config).reset_index()
    configs["wording"] = configs.wording.str.slice(0, 24)
    print("\neach configuration, packed beside solo (best_step: the evaluation whose weights were tested)")
    print(configs.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for pack, reports in slots.items():
        for r in reports:
            shown = {k: r.get(k) for k in ("members", "seats", "setup_s", "seats_s", "steps_s", "eval_s", "write_s")}
            print(f"pack {pack} slot: {shown}")
    return configs[[*KEY, "pack", "test_acc", "test_acc_solo"]].assign(seed=seed)


def seed_spread(runs: pd.DataFrame, solo_arm: int | str) -> None:
    """Each configuration's solo test accuracy over the seeds (mean, sd, range) beside its packed arms'
    gaps to solo, seed by seed."""
    solo = runs.groupby(KEY).test_acc_solo.agg(["mean", "std", "min", "max"]).add_prefix("solo_")
    packed = runs[runs.pack != solo_arm].assign(gap=lambda d: d.test_acc - d.test_acc_solo)
    gaps = packed.pivot_table(index=KEY, columns=["pack", "seed"], values="gap")
    gaps.columns = [f"gap_pack{p}_seed{s}" for p, s in gaps.columns]
    table = solo.join(gaps).reset_index()
    table["wording"] = table.wording.str.slice(0, 24)
    print("\neach configuration: its solo test accuracy over the seeds, and packed minus solo at each seed")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
