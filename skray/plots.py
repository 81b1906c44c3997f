"""The two pictures of a comparison: accuracy against what trains, and against training time."""
from __future__ import annotations

import io

import pandas as pd

from skray import storage

PLOTS = {
    "accuracy_vs_params.png": ("trainable_params", "trainable parameters (log scale)", True),
    "accuracy_vs_time.png": ("train_s", "train seconds (evaluation excluded)", False),
}


def plot_compare(trials: pd.DataFrame, run_dir: str) -> list[str]:
    """One point per method (mean over completed seeds, bars: sd); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = trials[trials["status"] == "completed"]
    written = []
    for name, (x, xlabel, log) in PLOTS.items():
        stats = done.groupby("method")[[x, "test_acc"]].agg(["mean", "std"]).fillna(0.0)
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
        for method, row in stats.iterrows():
            ax.errorbar(row[(x, "mean")], row[("test_acc", "mean")], xerr=row[(x, "std")], yerr=row[("test_acc", "std")], fmt="o", capsize=3)
            ax.annotate(method, (row[(x, "mean")], row[("test_acc", "mean")]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (mean ± sd over seeds)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        path = storage.join(run_dir, name)
        storage.write_bytes(path, buf.getvalue())
        written.append(path)
    return written
