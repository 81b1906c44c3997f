"""The trade-off a multi-objective search found: the trials no other trial beats on every objective
(pareto.csv), their hypervolume, and the accuracy-against-cost picture (pareto.png).

Only trials that reached their end are candidates: a trial ASHA stopped has truncated scores and
a truncated cost, so it would sit on the front for having trained less, not for being better.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from skray import storage
from skray.plots import _pyplot, _save

Objectives = Sequence[tuple[str, str]]  # (result column, "max" | "min"), as SearchConfig.resolved_objectives


def _numeric(table: pd.DataFrame, objectives: Objectives) -> pd.DataFrame:
    """The objectives' columns as floats (a column with missing values comes as objects, pd.NA)."""
    return table.assign(**{name: pd.to_numeric(table[name], errors="coerce") for name, _ in objectives})


def _losses(table: pd.DataFrame, objectives: Objectives) -> np.ndarray:
    """The objectives' values turned into quantities to minimise (maximised ones negated)."""
    signs = np.array([-1.0 if mode == "max" else 1.0 for _, mode in objectives])
    return table[[name for name, _ in objectives]].to_numpy(dtype=float) * signs


def pareto_front(table: pd.DataFrame, objectives: Objectives) -> pd.DataFrame:
    """The completed trials no other completed trial dominates (as good on every objective and better
    on one); trials with equal values are all kept. Sorted best first by the first objective."""
    names = [name for name, _ in objectives]
    done = _numeric(table[table["status"] == "completed"], objectives).dropna(subset=names)
    losses = _losses(done, objectives)
    beaten = [bool(((losses <= row).all(axis=1) & (losses < row).any(axis=1)).any()) for row in losses]
    front = done[[not b for b in beaten]]
    return front.sort_values(names[0], ascending=objectives[0][1] == "min", kind="stable").reset_index(drop=True)


def reference_point(table: pd.DataFrame, objectives: Objectives) -> list[float]:
    """The worst value of each objective over every trial that has one (stopped ones included):
    hypervolume measured from it says how far the front got beyond the run's own worst, so it
    compares runs only with the same reference, and a front point at a worst value adds nothing."""
    values = _numeric(table, objectives)
    return [float(values[n].min() if mode == "max" else values[n].max()) for n, mode in objectives]


def hypervolume(front: pd.DataFrame, objectives: Objectives, reference: Sequence[float]) -> float:
    """The volume the front dominates up to ``reference`` (in the objectives' own units and
    directions), by Optuna's exact computation; 0.0 for an empty front."""
    from optuna._hypervolume import compute_hypervolume  # private: the one place skray uses it

    if front.empty:
        return 0.0
    signs = np.array([-1.0 if mode == "max" else 1.0 for _, mode in objectives])
    return float(compute_hypervolume(_losses(front, objectives), np.asarray(reference, dtype=float) * signs))


def write_pareto(table: pd.DataFrame, objectives: Objectives, run_dir: str) -> pd.DataFrame:
    """pareto.csv (the front's rows, every column) and, with at least one cost beside the first
    objective, pareto.png; returns the front."""
    front = pareto_front(table, objectives)
    storage.write_text(storage.join(str(run_dir), "pareto.csv"), front.to_csv(index=False))
    if len(objectives) > 1:
        _plot(table, front, objectives, str(run_dir))
    return front


def _plot(table: pd.DataFrame, front: pd.DataFrame, objectives: Objectives, run_dir: str) -> str:
    """One panel per cost: the first objective against it. The front of that pair is a step line
    (what is attained at each cost), the front's trials in colour, other completed trials grey,
    trials ASHA stopped grey crosses."""
    plt = _pyplot()
    (score, _), costs = objectives[0], objectives[1:]
    table = _numeric(table, objectives)
    done = table[table["status"] == "completed"]
    stopped = table[table["status"] == "early_stopped"]
    on_front = done["trial"].isin(front["trial"])
    fig, axes = plt.subplots(1, len(costs), figsize=(5.5 * len(costs), 4.5), dpi=120, squeeze=False)
    for ax, (cost, mode) in zip(axes[0], costs, strict=True):
        pair = pareto_front(done, [objectives[0], (cost, mode)]).sort_values(cost)
        ax.step(pair[cost], pair[score], where="post" if mode == "min" else "pre", color="C0", alpha=0.6)
        ax.scatter(done.loc[~on_front, cost], done.loc[~on_front, score], color="0.6", label="dominated")
        ax.scatter(stopped[cost], stopped[score], color="0.6", marker="x", label="stopped early (ASHA)")
        ax.scatter(done.loc[on_front, cost], done.loc[on_front, score], color="C0", zorder=3, label="Pareto front")
        values = table[cost].dropna()
        if len(values) and values.min() > 0 and values.max() >= 100 * values.min():
            ax.set_xscale("log")
        ax.set_xlabel(f"{cost} ({'lower' if mode == 'min' else 'higher'} is better)")
        ax.set_ylabel(score)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = _save(fig, run_dir, "pareto.png")
    plt.close(fig)
    return path
