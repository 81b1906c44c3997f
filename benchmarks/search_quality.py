"""Does the search earn its name? TPE with a start-up sized to the budget against random search, on
the quickstart's space with short trials, a fixed budget and a few seeds.

Two questions, each answered side by side in one run:

- one objective: the best validation accuracy each sampler finds in ``--trials`` trials;
- two objectives (validation accuracy up, trainable parameters down, m searched over 2-32): the
  hypervolume of each sampler's Pareto front, all fronts against one reference point (the worst
  value of each objective over every trial of every run), so the numbers compare.

    python benchmarks/search_quality.py [--trials 12] [--seeds 0 1] [--steps 24] [--questions one two]

Each search is a real ``skray tune`` run (Ray Tune + Ray Train + DeepSpeed, ASHA on), quiet, its run
directory under a temporary folder. On 2 CPU cores a 12-trial search of 24-step trials takes about
7 minutes, so the default (2 samplers x 2 seeds x 2 questions) takes about an hour.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

QUICKSTART = Path(__file__).parents[1] / "experiments" / "quickstart.yaml"
TWO = [("best_val_acc", "max"), ("trainable_params", "min")]


def experiment(storage: str, sampler: str, seed: int, trials: int, steps: int, two_objectives: bool):
    from skray.config import load_config

    sets = [
        f"storage_path={storage}",
        f"name=sq-{sampler}-{seed}-{'two' if two_objectives else 'one'}",
        "train.num_workers=1",
        f"train.max_steps={steps}",
        f"train.eval_every={max(1, steps // 3)}",
        "data.max_train_samples=2000",
        "data.max_eval_samples=100",
        "data.max_test_samples=100",
        f"search.num_trials={trials}",
        f"search.sampler={sampler}",
        f"search.seed={seed}",
        "max_concurrent_trials=2",
    ]
    if two_objectives:
        sets += ["search.objectives.best_val_acc=max", "search.objectives.trainable_params=min"]
        sets += ["search.prefix_length.low=2", "search.prefix_length.high=32"]
    return load_config(QUICKSTART, sets)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--questions", nargs="+", choices=["one", "two"], default=["one", "two"])
    args = p.parse_args()

    from skray.pareto import hypervolume, pareto_front
    from skray.run import run_experiment

    rows, tables = [], {}
    with tempfile.TemporaryDirectory(prefix="skray-search-quality-") as storage:
        for two in [q == "two" for q in args.questions]:
            for seed in args.seeds:
                for sampler in ("tpe", "random"):
                    cfg = experiment(storage, sampler, seed, args.trials, args.steps, two)
                    start = time.monotonic()
                    _, table = run_experiment(cfg, "tune", verbose=False)
                    tables[(two, seed, sampler)] = table
                    done = table[table.status == "completed"]
                    rows.append(
                        {
                            "objectives": 2 if two else 1,
                            "seed": seed,
                            "sampler": sampler,
                            "trials": len(table),
                            "completed": len(done),
                            "best_val_acc": table.best_val_acc.max(),
                            "test_acc_of_best": done.test_acc.iloc[0] if len(done) else float("nan"),
                            "minutes": (time.monotonic() - start) / 60,
                        }
                    )
    two_objective = [t for (two, _, _), t in tables.items() if two]
    everything = pd.concat(two_objective) if two_objective else pd.DataFrame(columns=[m for m, _ in TWO])
    worst = [everything[m].astype(float).min() if d == "max" else everything[m].astype(float).max() for m, d in TWO]
    for row in rows:
        if row["objectives"] == 2:
            table = tables[(True, row["seed"], row["sampler"])]
            front = pareto_front(table, TWO)
            row["front_size"] = len(front)
            row["hypervolume"] = hypervolume(front, TWO, worst) if len(front) else 0.0
    table = pd.DataFrame(rows)
    print(f"\n{args.trials} trials of {args.steps} steps per search, seeds {args.seeds}\n")
    print(table.to_markdown(index=False, floatfmt=".4g"))
    means = {c: (c, "mean") for c in ("best_val_acc", "test_acc_of_best", "hypervolume") if c in table.columns}
    summary = table.groupby(["objectives", "sampler"]).agg(**means)
    print(f"\nmeans over seeds:\n{summary.reset_index().to_markdown(index=False, floatfmt='.4g')}")


if __name__ == "__main__":
    main()
