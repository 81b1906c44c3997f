"""Labelled splits in one shape, whatever the source: text, optional text_pair, integer label."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass

import pandas as pd

from skray.config import DataConfig
from skray.errors import DataError

SPLITS = ("train", "validation", "test")
FILE_ROWS = "1-based data rows of the file, header not counted"  # what a frame's index + 1 means
WHOLE = "the file"  # the name ``checked`` gives a table that has no split column


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


def _assign(groups: pd.Series, cfg: DataConfig) -> pd.Series:
    """The split of every row, by its group's bucket: deterministic, and no group straddles two splits."""
    u = groups.astype(str).map(_bucket)
    where = pd.Series("train", index=groups.index)
    where[u < cfg.test_fraction] = "test"
    where[(u >= cfg.test_fraction) & (u < cfg.test_fraction + cfg.validation_fraction)] = "validation"
    return where


def split_table(df: pd.DataFrame, cfg: DataConfig, source: str, by: str | None = None) -> dict[str, pd.DataFrame]:
    """A table without splits, ``checked``, then split deterministically so that every group lands in
    exactly one split: column ``by`` (an embedded set's own, e.g. its movie), else ``group_keys``."""
    df = checked({WHOLE: df}, cfg, source)[WHOLE]
    where = _assign(df[by] if by else group_keys(df, cfg, source), cfg)
    return {s: df[where == s] for s in SPLITS}


def group_keys(df: pd.DataFrame, cfg: DataConfig, source: str) -> pd.Series:
    """What keeps rows together in a split: data.group_column, else equal texts (or pairs)."""
    if cfg.group_column and cfg.group_column not in df.columns:
        raise DataError(f"{source}: group column {cfg.group_column!r} not found; fix data.group_column")
    if cfg.group_column:
        return df[cfg.group_column]
    keys = df[cfg.text_column].astype(str)
    if cfg.text_pair_column in df.columns:
        keys = keys + "\x1f" + df[cfg.text_pair_column].astype(str)
    return keys


def carve_missing(parts: dict[str, pd.DataFrame], cfg: DataConfig, source: str) -> dict[str, pd.DataFrame]:
    """A source that gives train but no (or an empty) validation or test split: carve those from its
    ``checked`` train, grouped as an unsplit table is, and keep every split it did give as it is."""
    lacking = [s for s in ("validation", "test") if len(parts.get(s, ())) == 0]
    if not lacking or len(parts.get("train", ())) == 0:
        return parts
    train = parts["train"]
    where = _assign(group_keys(train, cfg, source), cfg)
    where[~where.isin(lacking)] = "train"
    print(
        f"skray: {source}: carving {' and '.join(lacking)} from train (not given, or empty), "
        f"grouped by {cfg.group_column or cfg.text_column!r}",
        file=sys.stderr,
    )
    return {**parts, **{s: train[where == s] for s in ("train", *lacking)}}


def _check_word_lists(parts: dict[str, pd.DataFrame], cfg: DataConfig, source: str) -> None:
    """Token classification needs a list of words and an equally long list of tags per row."""
    for split in SPLITS:
        for words, tags in zip(parts[split][cfg.text_column], parts[split][cfg.label_column], strict=True):
            if not _is_list(words) or not _is_list(tags):
                raise DataError(
                    f"{source}: data.task token_classification needs lists of words and tags in "
                    f"{cfg.text_column!r} / {cfg.label_column!r} (a .jsonl or .parquet file; CSV holds only strings)"
                )
            if len(words) != len(tags):
                raise DataError(
                    f"{source}: a {split} row has {len(words)} words but {len(tags)} tags; give one tag per word"
                )


def _is_list(value) -> bool:
    return hasattr(value, "__len__") and not isinstance(value, (str, bytes))


def _is_blank(value) -> bool:
    return isinstance(value, str) and not value.strip()


def _missing(df: pd.DataFrame, cfg: DataConfig) -> dict[str, pd.Series]:
    """Per column, the rows with nothing in it: None/NaN anywhere, or a blank text. data.group_column
    counts where the part has it (``group_keys`` names it where a split is carved from a part without it)."""
    texts = [cfg.text_column] + ([cfg.text_pair_column] if cfg.text_pair_column else [])
    masks = {c: _absent(df[c]) for c in texts}
    masks[cfg.label_column] = df[cfg.label_column].isna()
    if cfg.group_column in df.columns:
        masks[cfg.group_column] = _absent(df[cfg.group_column])
    return masks


def _absent(values: pd.Series) -> pd.Series:
    return values.isna() | values.map(_is_blank).astype(bool)


def checked(
    parts: dict[str, pd.DataFrame], cfg: DataConfig, source: str, rows: str = FILE_ROWS
) -> dict[str, pd.DataFrame]:
    """A source's own parts (its splits, or WHOLE for a table without them) with their columns there and no
    missing text, label or group: checked before any split is carved, since carving hashes each row's
    group (its data.group_column, or its text), which a missing value does not have.

    Rows with a missing value are an error naming them, or dropped with data.drop_missing. ``rows`` says
    what a row number in an error means (the frames keep their source's index)."""
    _check_columns(parts, _columns(cfg), source)
    out, dropped = {}, {}
    for part, df in parts.items():
        masks = _missing(df, cfg)
        for column, mask in masks.items():
            if mask.any() and not cfg.drop_missing:
                first = ", ".join(str(i + 1) for i in df.index[mask.to_numpy()][:5])
                raise DataError(
                    f"{source}: {part} has {int(mask.sum())} row(s) with no {column!r} (first: {first}; {rows}); "
                    f"fill them in or set data.drop_missing: true"
                )
        keep = ~pd.concat(masks.values(), axis=1).any(axis=1)
        out[part], dropped[part] = _integral_labels(df[keep], cfg.label_column), int((~keep).sum())
    if any(dropped.values()):
        counts = ", ".join(f"{n} in {part}" for part, n in dropped.items() if n)
        print(
            f"skray: {source}: dropped rows with a missing text, label or group (data.drop_missing): {counts}",
            file=sys.stderr,
        )
    return out


def _integral_labels(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Integer labels that an empty cell turned into floats (1.0) go back to integers, so a label is '1'."""
    labels = df[column]
    if pd.api.types.is_float_dtype(labels) and (labels % 1 == 0).all():
        return df.assign(**{column: labels.astype("int64")})
    return df


def _columns(cfg: DataConfig) -> list[str]:
    return [cfg.text_column, cfg.label_column] + ([cfg.text_pair_column] if cfg.text_pair_column else [])


def _check_columns(parts: dict[str, pd.DataFrame], columns: list[str], source: str) -> None:
    for df in parts.values():
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataError(
                f"{source}: column {missing[0]!r} not found (columns: {', '.join(map(str, df.columns))}); "
                f"set data.text_column / data.label_column / data.text_pair_column"
            )


def build_splits(parts: dict[str, pd.DataFrame], cfg: DataConfig, source: str) -> Splits:
    """Splits made of ``checked`` parts: check labels, map them to ids, cap sizes; errors name the fix."""
    for split in SPLITS:
        if len(parts.get(split, ())) == 0:
            raise DataError(f"{source}: the {split} split is empty (add rows or change data.*_fraction)")
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
            frame = pd.DataFrame(
                {
                    "text": df[cfg.text_column].map(lambda ws: [str(w) for w in ws]).to_numpy(),
                    "label": labels.map(lambda tags: [index[t] for t in tags]).to_numpy(),
                }
            )
        else:
            frame = pd.DataFrame(
                {"text": df[cfg.text_column].astype(str).to_numpy(), "label": labels.map(index).to_numpy()}
            )
        if cfg.text_pair_column:
            frame["text_pair"] = df[cfg.text_pair_column].astype(str).to_numpy()
        if caps[split] and len(frame) > caps[split]:
            frame = frame.sample(n=caps[split], random_state=0)
        out[split] = frame.reset_index(drop=True)
    return Splits(out["train"], out["validation"], out["test"], names)
