"""Write an imbalanced two-label set from the embedded Rotten Tomatoes critics (85% fresh by default),
to see what `train.class_weights: balanced` does where always answering one label scores 0.85.

    python experiments/data/make_imbalanced.py OUT_DIR [--fresh 0.85] [--rows 2000 200 500] [--seed 0]

OUT_DIR gets train.csv, validation.csv and test.csv (columns text, label), each sampled from the
same split of `rotten_tomatoes_critics` (so no movie is in two of them), the same on every machine
for the same seed. Use it as `data.name: OUT_DIR`; keep runs' storage_path outside OUT_DIR.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from skray.config import DataConfig
from skray.data import load_splits


def sample(df: pd.DataFrame, labels: list[str], rows: int, fresh: float, seed: int) -> pd.DataFrame:
    """``rows`` rows of which a ``fresh`` share are fresh, shuffled."""
    df = df.assign(label=[labels[i] for i in df["label"]])
    n_fresh = round(rows * fresh)
    parts = [
        df[df["label"] == "fresh"].sample(n_fresh, random_state=seed),
        df[df["label"] == "rotten"].sample(rows - n_fresh, random_state=seed),
    ]
    return pd.concat(parts).sample(frac=1.0, random_state=seed)[["text", "label"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--fresh", type=float, default=0.85)
    p.add_argument("--rows", type=int, nargs=3, default=[2000, 200, 500], metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    splits = load_splits(DataConfig())
    args.out.mkdir(parents=True, exist_ok=True)
    for split, rows in zip(("train", "validation", "test"), args.rows, strict=True):
        part = sample(splits[split], splits.label_names, rows, args.fresh, args.seed)
        part.to_csv(args.out / f"{split}.csv", index=False)
        print(f"{args.out / f'{split}.csv'}: {len(part)} rows, {(part['label'] == 'fresh').mean():.2f} fresh")


if __name__ == "__main__":
    main()
