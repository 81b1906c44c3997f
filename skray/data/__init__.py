"""Data by name: embedded sets, local files and folders, hub ids, all returned as the same ``Splits``."""

from __future__ import annotations

from pathlib import Path

from skray.config import DataConfig
from skray.data.embedded import EMBEDDED
from skray.data.files import READERS, hub_dataset, local_file
from skray.data.splits import Splits
from skray.errors import DataError


def load_splits(cfg: DataConfig) -> Splits:
    if cfg.name in EMBEDDED:
        return EMBEDDED[cfg.name](cfg)
    path = Path(cfg.name).expanduser()
    if path.is_dir():  # datasets reads a folder of split files (train.csv, test.csv) as it reads a hub id
        return hub_dataset(str(path), cfg)
    if path.exists():
        return local_file(path, cfg)
    if path.suffix.lower() in READERS:  # a mistyped path, not a hub id: asking the hub only confused
        raise DataError(f"data.name {cfg.name!r}: no such file (a relative path is read from {Path.cwd()})")
    return hub_dataset(cfg.name, cfg)


__all__ = ["Splits", "load_splits"]
