"""`skray compare` and the other task families, as real Ray Train + DeepSpeed runs on a tiny Llama."""

import json
import runpy
from pathlib import Path

import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from skray.cli import main
from skray.config import parse_config
from skray.report import rebuild
from skray.results import format_table, load_results
from skray.run import run_experiment

pytestmark = pytest.mark.slow
THINGS = ("cat", "dog", "car", "cup", "hat", "box", "pen", "bag", "key", "map")
MAKE_NER = runpy.run_path(str(Path(__file__).parents[1] / "experiments" / "data" / "make_ner.py"))["write"]


def experiment(tiny_experiment, **sections):
    """The tiny experiment with one worker per run, no search, and whole sections merged in."""
    raw = tiny_experiment().model_dump(exclude={"search"})
    raw["train"]["num_workers"] = 1
    for section, values in sections.items():
        raw[section] = {**(raw.get(section) or {}), **values}
    return parse_config(raw)


def test_compare_writes_table_and_plots_and_a_failed_method_does_not_sink_the_rest(
    ray_cluster, tiny_experiment, tmp_path, capsys
):
    # A layer that exists (so the driver's check passes) but that LoRA cannot wrap: fails in the workers
    bad_lora = {"kind": "lora", "lora_target_modules": ["norm"]}
    cfg = experiment(
        tiny_experiment,
        compare={
            "methods": ["sk_prefix", bad_lora],  # every kind trains: test_baselines.py
            "seeds": [0, 1],
            "target_accuracy": 0.01,
        },
        train={"max_failures": 0},  # the failing method fails the same way on every restart
    )
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump()))
    assert main(["compare", str(path)]) == 1  # the table is written, and the exit code says some trials failed
    assert "2 of the run's trials failed" in capsys.readouterr().err
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    table = rebuild(str(run_dir))
    for name in (
        "compare.csv",
        "compare.parquet",
        "compare.md",
        "accuracy_vs_params.png",
        "accuracy_vs_time.png",
        "finished",
    ):
        assert (run_dir / name).stat().st_size > 0, name
    trials = load_results(str(run_dir))  # results.csv: one row per method and seed
    assert len(trials) == 4
    assert set(trials.seed) == {0, 1}
    lora = trials[trials.method == "lora(lora_target_modules=['norm'])"]
    assert set(lora.status) == {"error"}
    assert lora.error.str.contains("LlamaRMSNorm").all()
    rest = trials[~trials.method.str.startswith("lora")]
    assert set(rest.status) == {"completed"}
    assert (rest.test_acc.between(0, 1)).all()
    assert (rest.test_f1.between(0, 1)).all()
    assert (rest.steps_to_target == 0).all()  # any model reaches 1% accuracy at step 0
    # compare.csv: one row per method, numbers throughout, the sd in its own column.
    means = pd.read_csv(run_dir / "compare.csv").set_index("method")
    assert len(means) == 2
    words = ("error", "vs_best", "vs_best_per_seed")  # the error and the paired tests' verdicts are text
    assert all(pd.api.types.is_numeric_dtype(means[c]) for c in means.columns if c not in words)
    # Each completed trial kept its test rows' predictions beside its final checkpoint; the failed method
    # has none to pair with the best.
    for trial in rest.trial:
        saved = sorted((run_dir / f"train_{trial}").glob("checkpoint_*/test_predictions.csv"))[-1]
        predictions = pd.read_csv(saved)
        assert len(predictions) == rest.test_rows.iloc[0]
        assert (predictions.pred == predictions.gold).mean() == pytest.approx(rest.set_index("trial").test_acc[trial])
    assert means.loc["sk_prefix", "vs_best"] == "best (by validation)"
    assert means.loc[lora.method.iloc[0], "vs_best"] == "no per-row test predictions"
    assert (means.loc["sk_prefix", ["seeds", "completed", "reached_target"]] == [2, 2, 2]).all()
    accs = rest[rest.method == "sk_prefix"].test_acc
    assert means.loc["sk_prefix", "test_acc"] == pytest.approx(accs.mean())
    assert means.loc["sk_prefix", "test_acc_sd"] == pytest.approx(accs.std())
    assert (means.drop(index=lora.method.iloc[0]).trainable_pct < 100).all()
    assert means.loc[lora.method.iloc[0], "completed"] == 0
    assert "seed 0: " in means.loc[lora.method.iloc[0], "error"]
    assert pd.read_parquet(run_dir / "compare.parquet").shape == table.shape
    # The same files come back from `skray report`, which also names the failures.
    (run_dir / "compare.csv").unlink()
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "failed: lora" in out
    assert "0/2" in out
    assert (run_dir / "compare.csv").exists()
    # --retry-errored runs the failed trials of this same run again; the others are kept as they were.
    kept = {p: p.read_bytes() for p in run_dir.glob("*/result.json") if not (p.parent / "error.txt").exists()}
    assert main(["compare", str(path), "--retry-errored"]) == 1
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == [run_dir]
    assert all(p.read_bytes() == data for p, data in kept.items())
    retried = [p.read_text().count("Failure #") for p in run_dir.glob("*/error.txt")]
    assert retried == [2, 2]


def test_tuned_compare_searches_each_method_then_runs_its_best_with_every_seed(ray_cluster, tiny_experiment):
    """compare.tune: 2 methods x 1 Optuna trial, then each method's best setting x 2 seeds; each
    method searches its own lr range (the kind's default, an entry's own): its one start-up trial sits at
    the range's geometric middle. The best trial is the first seed's row: only the second seed runs
    again. (How ranges are chosen and spread over several trials: test_config.py, test_searcher.py.)"""
    cfg = experiment(
        tiny_experiment,
        compare={
            "methods": ["sk_prefix", {"kind": "prompt_tuning", "lr": {"low": 1e-2, "high": 1e-1}}],
            "seeds": [0, 1],
            "tune": {"trials": 1, "prefix_length": {"low": 2, "high": 6}},
        },
    )
    run_dir, table = run_experiment(cfg, "compare")
    searches = {p.name.split("-tune-")[0]: load_results(str(p)) for p in (Path(run_dir) / "tuning").iterdir()}
    assert len(searches) == 2
    assert all(len(t) == 1 for t in searches.values())
    lrs = {name.rsplit("-", 1)[-1]: sorted(t.lr) for name, t in searches.items()}
    assert lrs["sk_prefix"] == pytest.approx([(3e-4 * 1e-2) ** 0.5])  # LR_RANGES' geometric middle
    assert lrs["prompt_tuning"] == pytest.approx([10**-1.5])  # the middle of the entry's own range
    trials = load_results(run_dir)
    assert len(trials) == 4
    assert len(list(Path(run_dir).glob("run_trial_*"))) == 2  # what Tune ran: seed 1 of each method
    for kind in ("sk_prefix", "prompt_tuning"):
        search = next(t for name, t in searches.items() if name.endswith(kind))
        best = search[search.status == "completed"].iloc[0]  # best validation first
        ran = trials[trials.method.str.startswith(kind)]
        assert set(ran.seed) == {0, 1}
        assert ran.lr.tolist() == pytest.approx([best.lr, best.lr])  # every seed at the setting the search chose
        assert ran.method.iloc[0] == f"{kind}(prefix_length={int(best.prefix_length)})"
        first = ran[ran.seed == 0].iloc[0]
        assert (first.trial, first.test_acc, first.status) == (best.trial, best.test_acc, "completed")
    assert (table.tune_trials == 1).all()
    assert sorted(table.lr_searched) == ["0.0003-0.01", "0.01-0.1"]  # what each method's search covered


def test_token_classification_reports_span_f1(ray_cluster, tiny_experiment, tmp_path):
    data = MAKE_NER(tmp_path / "ner.jsonl", rows=120)
    cfg = experiment(
        tiny_experiment,
        data={"name": str(data), "task": "token_classification", "text_column": "tokens", "label_column": "tags"},
        method={"head": "linear", "label_words": None},
    )
    _, table = run_experiment(cfg, "train")
    row = table.iloc[0]
    assert row.status == "completed"
    assert 0 <= row.test_f1 <= 1
    assert 0 < row.test_acc <= 1
    for score in ("test_precision", "test_recall", "best_val_precision", "best_val_recall"):
        assert 0 <= row[score] <= 1, score  # span scores, as the README promises
    assert {"best_val_f1", "test_f1"} <= set(format_table(table).splitlines()[0].split())  # what it is sorted by
    assert row.trainable_params > 7 * 32  # the head scores 7 IOB tags at every position


def test_sentence_pair_classification_runs(ray_cluster, tiny_experiment, tmp_path):
    rows = [
        {"premise": f"the {a} is red", "hypothesis": f"the {b} is red", "label": "same" if a == b else "different"}
        for a in THINGS
        for b in THINGS
    ]
    path = tmp_path / "pairs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    cfg = experiment(
        tiny_experiment,
        data={
            "name": str(path),
            "text_column": "premise",
            "text_pair_column": "hypothesis",
            "template": "{text} / {text_pair} ?",
        },
        # The head that starts as the verbalizer, calibrated on "N/A / N/A ?"; selected by macro-F1.
        method={
            "kind": "sk_prompt",
            "head": "word_linear",
            "calibrate": True,
            "label_words": {"different": " no", "same": " yes"},
        },
        train={"select_by": "macro_f1"},
    )
    run_dir, table = run_experiment(cfg, "train")
    assert table.iloc[0].status == "completed"
    assert table.attrs["selection"] == "best_val_f1"
    (checkpoint,) = [p.parent for p in Path(run_dir).glob("train_*/checkpoint_*/skray.json")]  # Ray keeps one
    meta = json.loads((checkpoint / "skray.json").read_text())
    assert meta["label_names"] == ["different", "same"]
    assert meta["template"] == "{text} / {text_pair} ?"
    assert meta["val_f1"] == table.iloc[0].best_val_f1  # the worker kept the best state by macro-F1
    assert {"head.proj.weight", "head.proj.bias"} <= set(load_file(checkpoint / "adapter.safetensors"))
    predictions = pd.read_csv(checkpoint / "test_predictions.csv")
    assert (predictions.pred == predictions.gold).mean() == pytest.approx(table.iloc[0].test_acc)
