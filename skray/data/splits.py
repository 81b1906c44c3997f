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


def _check_word_lists(parts: dict[str, pd.DataFrame], cfg: DataConfig, source: str) -> None:
    """Token classification needs a list of words and an equally long list of tags per row."""
    for split in SPLITS:
        for words, tags in zip(parts[split][cfg.text_column], parts[split][cfg.label_column]):
            if not _is_list(words) or not _is_list(tags):
                raise DataError(f"{source}: data.task token_classification needs lists of words and tags in "
                                f"{cfg.text_column!r} / {cfg.label_column!r} (a .jsonl or .parquet file; CSV holds only strings)")
            if len(words) != len(tags):
                raise DataError(f"{source}: a {split} row has {len(words)} words but {len(tags)} tags; give one tag per word")


def _is_list(value) -> bool:
    return hasattr(value, "__len__") and not isinstance(value, (str, bytes))


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
    token_level = cfg.task == "token_classification"
    if token_level:
        _check_word_lists(parts, cfg, source)
        seen = {str(t) for tags in parts["train"][cfg.label_column] for t in tags}
    else:
        seen = {str(v) for v in parts["train"][cfg.label_column]}
    names = cfg.labels or sorted(seen)
    if len(names) < 2:
        raise DataError(f"{source}: need at least two labels, found {names}")
    index = {n: i for i, n in enumerate(names)}
    out = {}
    caps = {"train": cfg.max_train_samples, "validation": cfg.max_eval_samples, "test": cfg.max_test_samples}
    for split in SPLITS:
        df = parts[split]
        if token_level:
            labels = df[cfg.label_column].map(lambda tags: [str(t) for t in tags])
            used = {t for tags in labels for t in tags}
        else:
            labels = df[cfg.label_column].astype(str)
            used = set(labels)
        unknown = sorted(used - set(index))
        if unknown:
            raise DataError(f"{source}: unknown label {unknown[0]!r} in {split} (known: {names}); fix data.labels")
        if token_level:
            frame = pd.DataFrame({"text": df[cfg.text_column].map(lambda ws: [str(w) for w in ws]).to_numpy(),
                                  "label": labels.map(lambda tags: [index[t] for t in tags]).to_numpy()})
        else:
            frame = pd.DataFrame({"text": df[cfg.text_column].astype(str).to_numpy(), "label": labels.map(index).to_numpy()})
        if cfg.text_pair_column:
            frame["text_pair"] = df[cfg.text_pair_column].astype(str).to_numpy()
        if caps[split] and len(frame) > caps[split]:
            frame = frame.sample(n=caps[split], random_state=0)
        out[split] = frame.reset_index(drop=True)
    return Splits(out["train"], out["validation"], out["test"], names)
