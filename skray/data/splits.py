"""Labelled splits in one shape, whatever the source: text, optional text_pair, integer label."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd

from skray.config import DataConfig
from skray.errors import DataError

SPLITS = ("train", "validation", "test")


@dataclass
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    label_names: list[str]

    def __getitem__(self, split: str) -> pd.DataFrame:
        return getattr(self, split)


def _bucket(key: str) -> float:
    """A stable number in [0, 1) per key: the same on every machine and Python run."""
    return int(hashlib.md5(key.encode()).hexdigest()[:8], 16) / 16**8


def split_by_group(df: pd.DataFrame, groups: pd.Series, cfg: DataConfig) -> dict[str, pd.DataFrame]:
    """Deterministic split where every group (e.g. a movie) lands in exactly one split."""
    u = groups.astype(str).map(_bucket)
    test = u < cfg.test_fraction
    val = (u >= cfg.test_fraction) & (u < cfg.test_fraction + cfg.validation_fraction)
    return {"train": df[~test & ~val], "validation": df[val], "test": df[test]}


def build_splits(parts: dict[str, pd.DataFrame], cfg: DataConfig, source: str) -> Splits:
    """Check columns and labels, map labels to ids, cap sizes; errors name the fix."""
    columns = [cfg.text_column, cfg.label_column] + ([cfg.text_pair_column] if cfg.text_pair_column else [])
    for split in SPLITS:
        df = parts.get(split)
        if df is None or len(df) == 0:
            raise DataError(f"{source}: the {split} split is empty (add rows or change data.*_fraction)")
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataError(
                f"{source}: column {missing[0]!r} not found (columns: {', '.join(map(str, df.columns))}); "
                f"set data.text_column / data.label_column / data.text_pair_column"
            )
    names = cfg.labels or sorted({str(v) for v in parts["train"][cfg.label_column]})
    if len(names) < 2:
        raise DataError(f"{source}: need at least two labels, found {names}")
    index = {n: i for i, n in enumerate(names)}
    out = {}
    caps = {"train": cfg.max_train_samples, "validation": cfg.max_eval_samples, "test": cfg.max_test_samples}
    for split in SPLITS:
        df = parts[split]
        labels = df[cfg.label_column].astype(str)
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise DataError(f"{source}: unknown label {unknown[0]!r} in {split} (known: {names}); fix data.labels")
        frame = pd.DataFrame({"text": df[cfg.text_column].astype(str).to_numpy(), "label": labels.map(index).to_numpy()})
        if cfg.text_pair_column:
            frame["text_pair"] = df[cfg.text_pair_column].astype(str).to_numpy()
        if caps[split] and len(frame) > caps[split]:
            frame = frame.sample(n=caps[split], random_state=0)
        out[split] = frame.reset_index(drop=True)
    return Splits(out["train"], out["validation"], out["test"], names)
