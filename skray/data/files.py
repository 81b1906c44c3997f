"""Local CSV / JSONL / Parquet files, and data sets from the Hugging Face Hub."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from skray.config import DataConfig
from skray.data.splits import Splits, build_splits, split_by_group
from skray.errors import DataError

READERS = {
    ".csv": pd.read_csv,
    ".jsonl": lambda p: pd.read_json(p, lines=True),
    ".json": lambda p: pd.read_json(p, lines=True),
    ".parquet": pd.read_parquet,
}


def _split_frame(df: pd.DataFrame, cfg: DataConfig, source: str) -> Splits:
    """One table with no split column: split deterministically, grouped if asked."""
    if cfg.group_column and cfg.group_column not in df.columns:
        raise DataError(f"{source}: group column {cfg.group_column!r} not found; fix data.group_column")
    if cfg.group_column:
        keys = df[cfg.group_column]
    elif cfg.text_column in df.columns:  # equal texts (or pairs) stay in one split
        keys = df[cfg.text_column].astype(str)
        if cfg.text_pair_column in df.columns:
            keys = keys + "\x1f" + df[cfg.text_pair_column].astype(str)
    else:
        keys = df.index
    return build_splits(split_by_group(df, pd.Series(keys, index=df.index), cfg), cfg, source)


def local_file(path: Path, cfg: DataConfig) -> Splits:
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .csv, .jsonl or .parquet)")
    try:
        df = reader(path)
    except Exception as err:  # the parsers raise many types; the user needs the file and the reason
        raise DataError(f"{path}: could not read ({type(err).__name__}: {err})") from None
    if "split" in df.columns:
        parts = {s: df[df["split"] == s] for s in ("train", "validation", "test")}
        return build_splits(parts, cfg, str(path))
    return _split_frame(df, cfg, str(path))


def hub_dataset(name: str, cfg: DataConfig) -> Splits:
    """A hub data set by id (needs network); missing splits are carved from train."""
    import datasets

    try:
        ds = datasets.load_dataset(name)
    except Exception as err:
        raise DataError(f"data {name!r}: not an embedded name, a local file, or a reachable hub dataset ({type(err).__name__})") from None
    frames = {k: v.to_pandas() for k, v in ds.items()}
    if "validation" in frames and "test" in frames:
        return build_splits(frames, cfg, name)
    return _split_frame(frames["train"], cfg, name)
