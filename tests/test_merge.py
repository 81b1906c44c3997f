"""A comparison run in pieces (some methods each) and merged reads as the whole run would: the same
table, the same paired tests, from results and per-row predictions alone; merges that would mislead
(other data, an unfinished piece, a method twice) are refused before anything is written."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from skray.cli import main
from skray.errors import ConfigError
from skray.merge import merge_runs
from skray.predict import find_checkpoint
from skray.report import rebuild
from tests.test_paired import compare_run

ROWS = np.arange(300)
SEEDS = {
    "a": [(0.80, 0.70, ROWS < 210), (0.82, 0.70, ROWS < 210)],
    "b": [(0.60, 0.40, ROWS < 120), (0.61, 0.40, ROWS < 120)],
    "c": [(0.70, 0.71, ROWS < 213), (0.71, 0.71, ROWS < 213)],
    "d": [(0.95, float("nan"), None)],
    "e": [(0.75, 0.69, ROWS < 207), (0.74, 0.69, ROWS < 207)],
}


def config(methods, **train):
    return {
        "name": "piece",
        "data": {"name": "rotten_tomatoes_critics"},
        "train": {"lr": 0.01, "max_steps": 8, **train},
        "compare": {"methods": list(methods), "seeds": [0, 1], "target_accuracy": 0.8, "pack": "auto"},
    }


def piece(path, methods, first, **train):
    return compare_run(path, {m: SEEDS[m] for m in methods}, first=first, config=config(methods, **train))


def files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_comparison_merged_from_pieces_reads_as_the_whole_run(tmp_path):
    whole = rebuild(str(piece(tmp_path / "whole", "abcd", 0)))
    first, second = piece(tmp_path / "ab", "ab", 0), piece(tmp_path / "cd", "cd", 10)
    search = compare_run(first / "tuning" / "search-a", {"a": SEEDS["a"]}, first=90, config=config("a"))
    (search / "experiment.json").write_text(json.dumps({"command": "tune", "config": config("a")}))
    merged = merge_runs([str(first), str(second)], str(tmp_path / "merged"))
    columns = ["method", "completed", "test_acc", "vs_best_gap", "vs_best_ci_low", "vs_best_p", "vs_best"]
    pd.testing.assert_frame_equal(merged[columns], whole[columns])
    assert merged.set_index("method").loc["b", "vs_best"] == "beyond chance (2 seeds, 300 rows)"
    out = tmp_path / "merged"
    assert not list(out.glob("train_*")), "checkpoints are not copied"
    searched = pd.read_csv(out / "tuning" / "search-a" / "results.csv")  # a method's search, as evidence
    assert sorted(searched["test_acc"]) == [0.7, 0.7]
    assert not list((out / "tuning" / "search-a").glob("train_*"))
    assert len(list(out.glob("*/test_predictions.csv"))) == 6  # every completed trial's rows, beside its reports
    assert json.loads((out / "experiment.json").read_text())["config"]["compare"]["methods"] == list("abcd")
    assert (out / "compare.md").exists()
    assert (out / "finished").exists()
    with pytest.raises(
        ConfigError,
        match=f"has no checkpoint here \\(a merged folder keeps none: its trials ran in {first}, {second}\\)",
    ):
        find_checkpoint(out)

    # A later piece merges into the same folder; the folder alone is enough (the pieces may be gone).
    later = piece(tmp_path / "e", "e", 20)
    shutil.rmtree(first)
    shutil.rmtree(second)
    table = merge_runs([str(later)], str(out)).set_index("method")
    assert list(table.index) == ["a", "e", "c", "b", "d"]
    assert table.loc["e", "vs_best_gap"] == pytest.approx(0.01)
    assert table.loc["b", "vs_best_gap"] == pytest.approx(0.3)


def test_merges_that_would_mislead_are_refused_and_leave_the_folder_as_it_was(tmp_path):
    out = tmp_path / "merged"
    merge_runs([str(piece(tmp_path / "ab", "ab", 0))], str(out))
    before = files(out)
    refusals = {
        "differs from .* in train.max_steps \\(16 against 8\\)": piece(tmp_path / "c16", "c", 10, max_steps=16),
        "method a ran in both": piece(tmp_path / "a2", "a", 20),
        "both hold a trial t0000; merge one of them": piece(tmp_path / "same", "c", 0),
    }
    unfinished = piece(tmp_path / "cut", "c", 30)
    (unfinished / "finished").unlink()
    refusals["has not finished; run its command again"] = unfinished
    tuned = piece(tmp_path / "tune", "c", 40)
    (tuned / "experiment.json").write_text(json.dumps({"command": "tune", "config": config("c")}))
    refusals["a tune run; only compare runs are merged"] = tuned
    for message, run in refusals.items():
        with pytest.raises(ConfigError, match=message):
            merge_runs([str(run)], str(out))
    assert files(out) == before
    stranger = tmp_path / "notes"
    stranger.mkdir()
    (stranger / "todo.txt").write_text("mine")
    with pytest.raises(ConfigError, match="a folder that holds no skray run; name a new folder"):
        merge_runs([str(piece(tmp_path / "e", "e", 50))], str(stranger))
    assert files(stranger) == {stranger.joinpath("todo.txt").relative_to(stranger): b"mine"}


def test_the_cli_merges_with_into_and_says_what_is_missing_without(tmp_path, capsys):
    first, second = piece(tmp_path / "ab", "ab", 0), piece(tmp_path / "cd", "cd", 10)
    assert main(["report", str(first), str(second)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "skray: error: several run directories are merged into one folder: add --into DIR"
    assert main(["report", str(first), str(second), "--into", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "a vs b: test accuracy +0.300" in out
    assert f"merged into {tmp_path / 'm'}/" in out


def test_in_pieces_runs_only_the_methods_the_folder_does_not_hold(tmp_path):
    """experiments/in_pieces.py: a verdict's methods one compare run each, named apart, skipping those merged."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("in_pieces", "experiments/in_pieces.py")
    in_pieces = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(in_pieces)
    everything = in_pieces.pieces("experiments/verdict_full_rt.yaml", str(tmp_path / "none"))
    assert len(everything) == 10
    held = tmp_path / "held"
    held.mkdir()
    (held / "experiment.json").write_text(json.dumps({"command": "compare", "config": config(["sk_prefix"])}))
    label, overrides = in_pieces.pieces("experiments/verdict_full_rt.yaml", str(held))[0]
    assert label == "sk_prefix(adapter=free,prefix_length=13)"
    assert overrides == [
        'compare.methods=[{"kind": "sk_prefix", "adapter": "free", "prefix_length": 13}]',
        "name=verdict-full-rt-sk_prefix_adapter_free_prefix_length_13",
    ]
