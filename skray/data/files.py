"""Local CSV / JSONL / Parquet files, and data sets from the Hugging Face Hub or a local folder."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pandas as pd

from skray.config import DataConfig
from skray.data.splits import SPLITS, Splits, build_splits, carve_missing, checked, split_table
from skray.errors import DataError

READERS = {
    ".csv": pd.read_csv,
    ".jsonl": lambda p: pd.read_json(p, lines=True),
    ".json": lambda p: pd.read_json(p, lines=True),
    ".parquet": pd.read_parquet,
}
DATASET_ROWS = "1-based rows of the data set's split they came from"
INDEX_COLUMN = "__index_level_0__"  # where Arrow keeps a pandas index (read_table's cut texts, in a folder)
UNQUOTED = "a comma in a text that is not quoted? Put such texts in double quotes, or use .jsonl"


def read_table(path: Path, kinds: str = ".csv, .jsonl or .parquet") -> pd.DataFrame:
    """A local file as a table, or a one-line DataError: a type it is not (``kinds`` says what to use),
    the parser's reason, or a CSV whose first data line has more fields than its header. pandas takes
    that line for a sign that the file begins with an index column and moves every row's first field
    there: a first text with a comma and no quotes cut the start off every text in the file, silently."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use {kinds})")
    try:
        df = reader(path)
    except Exception as err:  # the parsers raise many types; the user needs the file and the reason
        raise DataError(f"{path}: could not read ({type(err).__name__}: {' '.join(str(err).split())})") from None
    if path.suffix.lower() == ".csv" and not isinstance(df.index, pd.RangeIndex):
        raise DataError(
            f"{path}: line 2 has more fields than the header line ({', '.join(map(str, df.columns))}): {UNQUOTED}"
        )
    return df


def local_file(path: Path, cfg: DataConfig) -> Splits:
    df = read_table(path, ".csv, .jsonl or .parquet, or a folder of them")
    source = str(path)
    if "split" in df.columns:
        return build_splits(carve_missing(checked(_given_splits(df, source), cfg, source), cfg, source), cfg, source)
    return build_splits(split_table(df, cfg, source), cfg, source)


def _given_splits(df: pd.DataFrame, source: str) -> dict[str, pd.DataFrame]:
    """The file's own split column; a value skray does not know would otherwise drop its rows unseen."""
    unknown = sorted(set(df["split"].astype(str)) - set(SPLITS))
    if unknown:
        raise DataError(
            f"{source}: unknown value(s) {unknown} in column 'split'; rename them to train, validation or test"
        )
    return {s: df[df["split"] == s] for s in SPLITS}


def hub_dataset(name: str, cfg: DataConfig) -> Splits:
    """A hub data set by id (needs network), or a local folder of split files (train.csv, test.parquet)
    that datasets reads the same way. Given splits are kept; missing ones are carved from train."""
    import datasets

    hub_log = logging.getLogger("huggingface_hub")  # its retries print a line each: the error below says it once
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        ds = datasets.load_dataset(name)
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else ""
        raise DataError(
            f"data {name!r}: datasets could not load it ({type(err).__name__}: {reason}); use an embedded "
            f"name, a .csv/.jsonl/.parquet file, a folder of split files or a reachable hub dataset id"
        ) from None
    finally:
        hub_log.setLevel(level)
    cut = [s for s in ds if INDEX_COLUMN in ds[s].column_names] if Path(name).is_dir() else []
    if cut:  # datasets reads a folder's CSVs with pandas, which moved each row's first field there
        raise DataError(f"{name}: the {cut[0]} file's line 2 has more fields than its header line: {UNQUOTED}")
    if "train" not in ds:
        raise DataError(
            f"data {name!r}: no train split (splits: {', '.join(ds)}); name a data set or folder that has one"
        )
    parts = {s: ds[s].to_pandas() for s in SPLITS if s in ds}
    if isinstance(ds["train"].features.get(cfg.label_column), datasets.ClassLabel):
        parts = _drop_unlabelled(parts, cfg.label_column, name)
    return build_splits(carve_missing(checked(parts, cfg, name, DATASET_ROWS), cfg, name), cfg, name)


def _drop_unlabelled(parts: dict[str, pd.DataFrame], column: str, source: str) -> dict[str, pd.DataFrame]:
    """-1 is datasets' ClassLabel for "no gold label" (SNLI's unsure rows; GLUE test splits are all -1):
    left in, it would be one more class. A split left empty is then carved from train."""
    kept = {s: df[df[column] != -1] for s, df in parts.items()}
    dropped = {s: len(parts[s]) - len(kept[s]) for s in parts}
    if any(dropped.values()):
        counts = ", ".join(f"{s} {n}" + (" (all)" if n == len(parts[s]) else "") for s, n in dropped.items() if n)
        print(f"skray: {source}: dropped rows with label -1 (no gold label): {counts}", file=sys.stderr)
    return kept
