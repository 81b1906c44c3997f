"""What an interruption leaves on disk is never trusted: cut-off lines, half-written files."""

import json

import pytest

from skray.report import rebuild


def test_report_skips_a_cut_off_line_and_ignores_half_written_files(tmp_path):
    (tmp_path / "experiment.json").write_text(json.dumps({"command": "train", "config": {}}))
    trial = tmp_path / "run_trial_abc12_00000_0_method=sk_prefix"
    trial.mkdir()
    (trial / "params.json").write_text(json.dumps({"method": "sk_prefix", "lr": 0.001}))
    first = {"trial_id": "abc12_00000", "step": 0, "zero_shot_acc": 0.5, "best_val_acc": 0.5}
    last = {**first, "step": 4, "best_val_acc": 0.75, "test_acc": 0.7, "done": True}
    (trial / "result.json").write_text(json.dumps(first) + "\n" + json.dumps(last)[:40])  # killed mid-line
    half = tmp_path / "run_trial_abc12_00001_1_method=sk_prompt"
    half.mkdir()
    (half / "params.json").write_text('{"method": "sk_pr')  # killed while Tune wrote it
    (tmp_path / ".results.csv.tmp").write_text("trial,met")  # a write that never reached its rename

    table = rebuild(str(tmp_path))
    assert len(table) == 1
    row = table.iloc[0]
    assert row.best_val_acc == 0.5
    assert row.status == "interrupted"
    written = (tmp_path / "results.csv").read_text().splitlines()
    assert len(written) == 2
    assert written[0].startswith("trial,")


def test_a_search_trial_taken_into_a_compare_run_is_its_row_under_the_compare_labels(tmp_path):
    from skray.commands.compare import take_trial
    from skray.results import load_results

    search, run = tmp_path / "tuning" / "search", tmp_path
    (run / "experiment.json").write_text(json.dumps({"command": "compare", "config": {}}))
    reports = [
        {"trial_id": "ab12", "step": 0, "best_val_acc": 0.5, "lr": 0.003},
        {"trial_id": "ab12", "step": 8, "best_val_acc": 0.7, "lr": 0.003, "test_acc": 0.68, "done": True},
    ]
    for name, error in (("run_trial_ab12_1_lr=0.003", None), ("run_trial_cd34_2_lr=0.01", "ValueError: boom")):
        trial = search / name
        trial.mkdir(parents=True)
        (trial / "params.json").write_text(json.dumps({"method": "sk_prefix", "prefix_length": 9, "lr": 0.003}))
        (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in reports))
        if error:
            (trial / "error.txt").write_text(f"Failure # 1\n{error}\n")
        take_trial(str(trial), str(run), {"method": "sk_prefix(prefix_length=9)", "seed": 0})
    table = load_results(str(run)).set_index("status")
    assert table.loc["completed", ["method", "seed", "lr", "test_acc"]].tolist() == [
        "sk_prefix(prefix_length=9)",
        0,
        0.003,
        0.68,
    ]
    assert table.loc["error", "error"] == "ValueError: boom"


def test_the_table_of_a_search_over_a_kind_without_a_wording_prints(tmp_path):
    """`skray report` on compare.tune's LoRA search: no trial has a wording or m."""
    from skray.results import format_table, load_results

    (tmp_path / "experiment.json").write_text(json.dumps({"command": "tune", "config": {}}))
    for trial, lr, acc in (("ab12", 0.003, 0.64), ("cd34", 0.001, 0.57)):
        d = tmp_path / f"run_trial_{trial}_1_lr={lr}"
        d.mkdir()
        (d / "params.json").write_text(json.dumps({"method": "lora", "lr": lr}))
        report = {"trial_id": trial, "step": 8, "best_val_acc": acc, "test_acc": acc, "done": True}
        (d / "result.json").write_text(json.dumps(report) + "\n")
    text = format_table(load_results(str(tmp_path)))
    assert "wording" not in text.splitlines()[0]
    assert text.splitlines()[1].split()[:2] == ["ab12", "lora"]


def trials(test_acc: float, zero_shot: float = 0.6, majority: float = 0.65, f1: float = 0.5, rows: int = 2000):
    import pandas as pd

    return pd.DataFrame(
        {
            "trial": ["a", "b"],
            "wording": ["w", "w"],
            "best_val_acc": [0.8, 0.7],
            "test_acc": [test_acc, 0.9],
            "test_f1": [f1, 0.5],
            "zero_shot_test_acc": [zero_shot, zero_shot],
            "zero_shot_test_f1": [0.45, 0.45],
            "majority_test_acc": [majority, majority],
            "majority_test_f1": [0.26, 0.26],
            "test_rows": [rows, rows],
            "status": ["completed", "completed"],
        }
    )


def test_the_verdict_says_plainly_when_the_best_trial_loses_to_the_majority_label():
    """The held-back 3-class case: 0.59 on test after tuning, 65% of the test rows share one label."""
    from skray.report import show

    lines = show(trials(0.59)).splitlines()
    assert lines[-1].startswith("best trial by validation (a): test accuracy 0.590, macro-F1 0.500; always")
    assert lines[-1].endswith("It does NOT beat always answering the majority label.")
    assert show(trials(0.62, zero_shot=0.63, majority=0.5)).endswith("training did not help on test.")
    assert show(trials(0.8)).endswith(
        "majority label: 0.650 (macro-F1 0.260); the untrained (step-0) model: 0.600 (macro-F1 0.450). It beats both."
    )  # trial b's 0.9 on test does not count: trials are chosen by validation


def test_the_verdict_does_not_call_a_margin_within_sampling_error_a_win():
    """The imbalanced RT case: 0.854 against 0.850 for the majority label on 500 test rows, macro-F1 0.498."""
    from skray.report import show

    line = show(trials(0.854, zero_shot=0.828, majority=0.85, f1=0.498, rows=500)).splitlines()[-1]
    assert "Its margin over the majority label (0.004) is within sampling error" in line
    assert line.endswith("over 500 test rows: 0.032): it does NOT clearly beat it.")
    # the same margin over 100,000 rows is real; a macro-F1 below the step-0 model's is still said
    line = show(trials(0.854, zero_shot=0.828, majority=0.85, f1=0.40, rows=100_000)).splitlines()[-1]
    assert line.endswith("Its accuracy beats both, but its macro-F1 does NOT beat the untrained model's.")


def test_class_weights_and_majority():
    import torch

    from skray.train.evaluate import balanced_weights, majority_scores, task_loss

    labels = torch.tensor([0, 0, 0, 1, -100])  # -100: a token that is not scored
    weights = balanced_weights(labels, 3)
    assert weights.tolist() == pytest.approx([4 / 9, 4 / 3, 0.0])  # n / (labels x count); absent label: 0
    majority = majority_scores(labels, 3)
    assert majority["acc"] == 0.75
    assert majority["f1"] == pytest.approx((2 * 0.75 / 1.75) / 2)  # F1 of label 0, 0 for label 1; label 2 unseen
    logits = torch.zeros(4, 3)
    logits[:, 0] = 2.0  # always the majority label
    plain = task_loss(logits, labels[:4])
    weighted = task_loss(logits, labels[:4], weight=weights)
    assert weighted > plain  # the rare label's misses weigh more


def test_the_readable_table_leaves_out_the_sd_where_every_seed_agrees():
    """0.39 three times has a float std of about 7e-17: "0.39", not "0.39 ± 6.799e-17"."""
    import pandas as pd

    from skray.commands.compare import COSTS, SCORES, readable, summary_table

    trials = pd.DataFrame(
        {col: [float("nan")] * 3 for col in [*SCORES, *COSTS]}
        | {
            "method": ["sk_prompt"] * 3,
            "lr": [0.004] * 3,
            "seed": [0, 1, 2],
            "status": ["completed"] * 3,
            "zero_shot_test_acc": [0.39] * 3,
            "test_acc": [0.483, 0.517, 0.39],
            "trainable_params": [4790] * 3,
            "backbone_params": [134515008] * 3,
            "steps_to_target": [None] * 3,
        }
    )
    shown = readable(summary_table(trials)).iloc[0]
    assert shown["zero_shot_test_acc"] == "0.39"
    assert shown["trainable_pct"] == "0.003561"
    assert shown["test_acc"] == "0.4633 ± 0.06574"


def test_select_by_chooses_the_metric_that_selects_everywhere_and_both_are_reported():
    """train.select_by: the worker's best evaluation, the searcher's and ASHA's objective and the tables'
    ranking all follow it; token classification selects by span F1 whatever it says."""
    import pandas as pd

    from skray.commands.compare import COSTS, SCORES, summary_table
    from skray.config import SearchConfig, TrainConfig, selection_metric
    from skray.results import best_trial, selection_key

    assert TrainConfig().select_by == "accuracy"
    assert selection_metric("classification", TrainConfig(select_by="macro_f1").select_by) == "f1"
    assert selection_metric("classification") == "acc"
    assert selection_metric("token_classification", "accuracy") == "f1"
    search = SearchConfig(wordings=["w"], prefix_length={"low": 2, "high": 4}, lr={"low": 1e-3, "high": 1e-2})
    assert search.resolved_objectives("classification", "macro_f1") == [("best_val_f1", "max")]
    assert search.resolved_objectives("classification") == [("best_val_acc", "max")]
    assert selection_key({"train": {"select_by": "macro_f1"}}) == "best_val_f1"
    assert selection_key({}) == "best_val_acc"

    trials = pd.DataFrame(
        {col: [float("nan")] * 4 for col in [*SCORES, *COSTS]}
        | {
            "method": ["a", "a", "b", "b"],
            "lr": [0.01] * 4,
            "seed": [0, 1, 0, 1],
            "status": ["completed"] * 4,
            "best_val_acc": [0.9, 0.8, 0.7, 0.7],
            "best_val_f1": [0.5, 0.5, 0.6, 0.7],
            "test_acc": [0.6, 0.6, 0.9, 0.9],  # never what ranks
            "trainable_params": [1] * 4,
            "backbone_params": [10] * 4,
            "steps_to_target": [None] * 4,
        }
    )
    assert list(summary_table(trials)["method"]) == ["a", "b"]
    by_f1 = summary_table(trials, "best_val_f1")
    assert list(by_f1["method"]) == ["b", "a"]
    assert best_trial(by_f1)["method"] == "b"
