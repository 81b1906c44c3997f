"""Pictures of a run: for a comparison and a search, accuracy against what trains and against
training time (a search also its learning curves); for a scaling grid, throughput and memory
against workers."""

from __future__ import annotations

import io

import pandas as pd

from skray import storage

PLOTS = {
    "accuracy_vs_params.png": ("trainable_params", "trainable parameters (log scale)", True),
    "accuracy_vs_time.png": ("train_s", "train seconds (evaluation excluded)", False),
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, run_dir: str, name: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    path = storage.join(run_dir, name)
    storage.write_bytes(path, buf.getvalue())
    return path


def plot_compare(trials: pd.DataFrame, run_dir: str, title: str = "") -> list[str]:
    """One point per method (mean over completed seeds, bars: sd), under ``title`` (how the methods'
    settings were chosen); returns the files written."""
    plt = _pyplot()
    done = trials[trials["status"] == "completed"]
    written = []
    for name, (x, xlabel, log) in PLOTS.items():
        stats = done.groupby("method")[[x, "test_acc"]].agg(["mean", "std"]).fillna(0.0)
        fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
        for i, (method, row) in enumerate(stats.iterrows()):  # up to 20 methods stay distinct (colour x marker)
            ax.errorbar(
                row[(x, "mean")],
                row[("test_acc", "mean")],
                xerr=row[(x, "std")],
                yerr=row[("test_acc", "std")],
                fmt="osD^v"[i % 5],
                color=plt.cm.tab20(i % 20),
                capsize=3,
                label=method,
            )
        if "majority_test_acc" in done.columns and done["majority_test_acc"].notna().any():  # same test rows
            majority = float(done["majority_test_acc"].max())
            ax.axhline(majority, color="grey", linestyle="--", linewidth=1, label="always the majority label")
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (mean ± sd over seeds)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        written.append(_save(fig, run_dir, name))
        plt.close(fig)
    return written


def plot_tune(trials: pd.DataFrame, curves: pd.DataFrame, run_dir: str, key: str = "acc") -> list[str]:
    """A search's trials: best validation score against trainable parameters and against train
    seconds (one point per trial, stopped ones as grey crosses), and curves.png, every trial's
    validation score against step (an x where ASHA stopped it). Returns the files written."""
    plt = _pyplot()
    written = []
    score = f"best_val_{key}"
    done = trials[trials["status"] == "completed"]
    stopped = trials[trials["status"] == "early_stopped"]
    for name, (x, xlabel, log) in PLOTS.items():
        if done[x].notna().sum() + stopped[x].notna().sum() == 0:
            continue  # an interrupted run before any trial ended: nothing to place yet
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
        ax.scatter(done[x], done[score], color="tab:blue", label="completed")
        ax.scatter(stopped[x], stopped[score], color="grey", marker="x", label="stopped early (ASHA)")
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"best validation {key}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, run_dir, name))
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ended = dict(zip(trials["trial"], trials["status"], strict=True))
    for i, (trial, curve) in enumerate(curves.sort_values("step").groupby("trial")):
        color = plt.cm.tab20(i % 20)
        ax.plot(curve["step"], curve[f"val_{key}"], color=color, label=str(trial))
        if ended.get(trial) == "early_stopped":
            ax.scatter(curve["step"].iloc[-1], curve[f"val_{key}"].iloc[-1], color=color, marker="x", s=60)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"validation {key}")
    ax.set_title("learning curves (x: stopped by ASHA)", fontsize=9)
    ax.grid(alpha=0.3)
    if len(curves):  # a run cut before its first evaluation has no curve to name
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    written.append(_save(fig, run_dir, "curves.png"))
    plt.close(fig)
    return written


def plot_scale(table: pd.DataFrame, run_dir: str) -> str:
    """scaling.png: samples/s and peak memory per worker against workers, one line per ZeRO setting."""
    plt = _pyplot()
    done = table[table["status"] == "completed"]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    for (stage, offload, micro), group in done.groupby(["zero_stage", "offload", "micro_batch"]):
        group = group.sort_values("workers")
        name = f"ZeRO {stage}, offload {offload}, micro {micro}"
        speed.plot(group["workers"], group["steady_samples_per_s"], "o-", label=name)
        memory.plot(group["workers"], group["peak_mem_mb"], "o-", label=name)
    for ax, ylabel in ((speed, "samples/s (steady state)"), (memory, "peak memory per worker (MiB)")):
        ax.set_xlabel("workers")
        ax.set_ylabel(ylabel)
        ax.set_xticks(sorted(done["workers"].unique()) if len(done) else [])
        ax.grid(alpha=0.3)
    if len(done):
        speed.legend(fontsize=7)
    fig.tight_layout()
    path = _save(fig, run_dir, "scaling.png")
    plt.close(fig)
    return path
