"""`skray compare` and the other task families, as real Ray Train + DeepSpeed runs on a tiny Llama."""

import json
import runpy
from pathlib import Path

import pandas as pd
import pytest
import yaml

from skray.cli import main
from skray.config import parse_config
from skray.report import rebuild
from skray.search import run_experiment

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
    bad_lora = {"kind": "lora", "lora_target_modules": ["not_a_layer"]}
    cfg = experiment(
        tiny_experiment,
        compare={
            "methods": ["sk_prefix", "prefix_tuning", bad_lora, "linear_probe"],
            "seeds": [0, 1],
            "target_accuracy": 0.01,
        },
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
    per_seed = table[table.seed != "mean ± sd"]
    assert len(per_seed) == 8
    assert set(per_seed.seed) == {"0", "1"}
    lora = per_seed[per_seed.method == "lora(lora_target_modules=['not_a_layer'])"]
    assert set(lora.status) == {"error"}
    assert lora.error.str.contains("not_a_layer").all()
    rest = per_seed[~per_seed.method.str.startswith("lora")]
    assert set(rest.status) == {"completed"}
    assert (rest.test_acc.between(0, 1)).all()
    assert (rest.test_f1.between(0, 1)).all()
    assert (rest.steps_to_target == 0).all()  # any model reaches 1% accuracy at step 0
    probe = rest[rest.method == "linear_probe"]
    assert (probe.trainable_params == 2 * 32 + 2).all()
    assert (rest.trainable_pct < 100).all()
    means = table[table.seed == "mean ± sd"].set_index("method")
    assert means.loc["sk_prefix", "status"] == "2/2 completed"
    accs, shown = rest[rest.method == "sk_prefix"].test_acc.astype(float), means.loc["sk_prefix", "test_acc"]
    assert shown.split(" ± ")[0] == f"{accs.mean():.4g}"
    assert ("±" in shown) == (accs.nunique() > 1)
    assert means.loc[lora.method.iloc[0], "status"] == "0/2 completed"
    assert pd.read_parquet(run_dir / "compare.parquet").shape == table.shape
    # The same files come back from `skray report`, which also names the failures.
    (run_dir / "compare.csv").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert "failed: lora" in capsys.readouterr().out
    assert (run_dir / "compare.csv").exists()


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
        method={"kind": "sk_prompt", "head": "linear", "label_words": None},
    )
    run_dir, table = run_experiment(cfg, "train")
    assert table.iloc[0].status == "completed"
    meta = json.loads(next(Path(run_dir).glob("train_*/checkpoint_*/skray.json")).read_text())
    assert meta["label_names"] == ["different", "same"]
    assert meta["template"] == "{text} / {text_pair} ?"
