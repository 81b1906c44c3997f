"""Verdicts with power: per-row test predictions gathered over ranks, the paired tests on constructed
predictions with known answers, and the compare table's columns built from them."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from skray.results import gap_verdict, mcnemar_p, paired_gap


def test_mcnemar_exact_p_on_known_counts():
    best = np.array([True] * 3 + [False] * 1 + [True] * 10 + [False] * 6)
    other = np.array([False] * 3 + [True] * 1 + [True] * 10 + [False] * 6)
    assert mcnemar_p(best, other) == pytest.approx(2 * (1 + 4) / 16)  # b = 3, c = 1: 2 P(X <= 1), X ~ Bin(4, 1/2)
    assert mcnemar_p(best, best) == 1.0  # no discordant rows
    right, half = np.ones(200, bool), np.arange(200) % 2 == 0
    assert mcnemar_p(right, half) == pytest.approx(2 * 0.5**100)


def test_a_gap_of_half_the_rows_is_beyond_chance_and_identical_predictions_are_not():
    right, half = np.ones((1, 200), bool), (np.arange(200) % 2 == 0)[None]
    gap = paired_gap(right, half)
    assert gap["gap"] == pytest.approx(0.5)
    se = math.sqrt(0.25 / 200)  # the per-row differences are 0 or 1, half each
    assert gap["ci_low"] == pytest.approx(0.5 - 1.96 * se, abs=0.015)
    assert gap["ci_high"] == pytest.approx(0.5 + 1.96 * se, abs=0.015)
    assert gap["p"] < 0.001
    assert gap_verdict(gap) == "beyond chance"
    assert gap_verdict(paired_gap(half, right)) == "beyond chance (the other is better on test)"

    same = paired_gap(half, half)
    assert (same["gap"], same["ci_low"], same["ci_high"], same["p"]) == (0.0, 0.0, 0.0, 1.0)
    assert gap_verdict(same) == "within chance"


def test_over_seeds_the_gap_is_the_difference_of_mean_accuracies_and_rows_are_resampled_jointly():
    """Three seeds of a method right on rows 0-59 of 100 against one seed right on rows 0-49: the gap is
    0.1; one seed's rows alone would be 10 discordant rows of 100, two seeds that disagree on every row
    cancel. Rows are resampled once for all seeds, so a method whose seeds answer alike has the interval
    of one seed, not a narrower one from counting each row thrice."""
    rows = np.arange(100)
    best = np.stack([rows < 60] * 3)
    other = (rows < 50)[None]
    pooled = paired_gap(best, other)
    one = paired_gap(best[:1], other)
    assert pooled["gap"] == pytest.approx(0.1)
    assert (pooled["ci_low"], pooled["ci_high"]) == pytest.approx((one["ci_low"], one["ci_high"]))
    assert pooled["ci_low"] > 0  # 10 rows right against none the other way: beyond chance
    few = paired_gap(np.array([[True] * 4 + [False] * 12]), np.array([[False] * 16]))  # 4 rows to none
    assert few["ci_low"] > 0
    assert few["p"] > 0.05
    assert gap_verdict(few) == "within chance"
    flipped = paired_gap(np.stack([rows % 2 == 0, rows % 2 == 1]), (rows < 50)[None])
    assert flipped["gap"] == pytest.approx(0.0)
    assert gap_verdict(flipped) == "within chance"


def test_evaluation_gathers_each_rows_prediction_from_the_rank_that_scored_it():
    """Two ranks' shards (padded so both run the same batches) put together as the max-reduce does:
    every row once, in the split's order, as one process scoring the split whole predicts it."""
    from skray.train.evaluate import evaluate

    class Fixed(torch.nn.Module):  # predicts label = first token id mod 3
        def forward(self, input_ids, attention_mask):
            return torch.nn.functional.one_hot(input_ids[:, 0] % 3, 3).float()

    n = 11
    ids = torch.randint(0, 100, (n, 4))
    encoded = {"input_ids": ids, "attention_mask": torch.ones(n, 4, dtype=torch.long), "labels": ids[:, 1] % 3}
    common = {"batch_size": 2, "device": torch.device("cpu"), "label_names": ["a", "b", "c"]}
    whole: dict = {}
    evaluate(Fixed(), encoded, rank=0, world=1, predictions=whole, **common)
    assert torch.equal(whole["pred"], ids[:, 0] % 3)
    shards = []
    for rank in (0, 1):
        shards.append({})
        evaluate(Fixed(), encoded, rank=rank, world=2, predictions=shards[-1], **common)
    assert all((s["pred"] == -1).any() for s in shards)  # each rank holds only its rows before the reduce
    assert torch.equal(torch.maximum(shards[0]["pred"], shards[1]["pred"]), whole["pred"])


def test_saved_predictions_read_back(tmp_path):
    from skray.results import trial_predictions
    from skray.train.evaluate import save_predictions

    checkpoint = tmp_path / "train_ab12" / "checkpoint_000003"
    checkpoint.mkdir(parents=True)
    save_predictions(str(checkpoint), torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]))
    frame = trial_predictions(str(tmp_path), "ab12")
    assert frame.to_dict("list") == {"row": [0, 1, 2], "gold": [0, 1, 1], "pred": [0, 0, 1]}
    assert trial_predictions(str(tmp_path), "cd34") is None


def test_a_merged_solo_seeds_predictions_are_found_by_its_tune_trial_id(tmp_path):
    """A compare's solo seeds are Tune's basic-variant trials, ids with an underscore (``ea424_00000``);
    a merge keeps their predictions beside their reports in ``run_trial_<id>_<n>_<params>_<time>``. The
    id read from that name was cut at its underscore, so a merged solo method (the RT verdict's LoRA)
    was paired on the one seed its search ran instead of five."""
    from skray.results import trial_of, trial_predictions
    from skray.train.evaluate import save_predictions

    names = {
        "run_trial_ea424_00000_0_method=lora_head_verbalizer,seed=1_2026-12-05_15-45-36": "ea424_00000",
        "run_trial_f9172397_4_head=verbalizer,lr=0.0006,method=lora_2026-12-05_15-29-26": "f9172397",
        "run_trial_06b92cfc_1_slot=0_2026-12-05_13-21-44": "06b92cfc",
        "train_m3afe3001": "m3afe3001",
    }
    assert {name: trial_of(name) for name in names} == names
    seed = tmp_path / next(iter(names))
    seed.mkdir()
    save_predictions(str(seed), torch.tensor([1, 0]), torch.tensor([1, 1]))
    assert trial_predictions(str(tmp_path), "ea424_00000").to_dict("list") == {
        "row": [0, 1],
        "gold": [1, 0],
        "pred": [1, 1],
    }
    assert trial_predictions(str(tmp_path), "ea424_00001") is None


GOLD = np.arange(300) % 2


def compare_run(
    tmp_path, methods: dict[str, list[tuple[float, float, np.ndarray | None]]], first: int = 0, config=None
):
    """A compare run dir: per method, per seed (best validation accuracy, test accuracy, right-or-wrong
    per test row, or None for a trial ASHA never let finish), with the predictions in the checkpoint;
    trials numbered from ``first``, started with ``config``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "experiment.json").write_text(json.dumps({"command": "compare", "config": config or {}}))
    n = first
    for method, seeds in methods.items():
        for seed, (val, test, right) in enumerate(seeds):
            trial = f"t{n:04d}"
            d = tmp_path / f"run_trial_{trial}_{n}_method={method},seed={seed}"
            d.mkdir()
            (d / "params.json").write_text(json.dumps({"method": method, "seed": seed, "lr": 0.01}))
            report = {"trial_id": trial, "step": 8, "best_val_acc": val, "trainable_params": 10, "train_s": 1.0}
            if right is not None:
                report |= {"test_acc": test, "test_f1": test, "done": True, "backbone_params": 1000}
                report |= {"majority_test_acc": 0.5, "majority_test_f1": 0.33, "test_rows": len(GOLD)}
                checkpoint = tmp_path / f"train_{trial}" / "checkpoint_000001"
                checkpoint.mkdir(parents=True)
                pred = np.where(right, GOLD, 1 - GOLD)
                pd.DataFrame({"row": range(len(GOLD)), "gold": GOLD, "pred": pred}).to_csv(
                    checkpoint / "test_predictions.csv", index=False
                )
            (d / "result.json").write_text(json.dumps(report) + "\n")
            n += 1
    (tmp_path / "finished").write_text("")
    return tmp_path


def test_the_compare_table_says_which_gaps_to_the_best_method_are_beyond_chance(tmp_path):
    """a: the best by validation (its test is lower than c's); b: 0.3 below it on every seed; c: level
    with it; d: stopped by ASHA on its one seed, so never tested: no predictions, and never the best
    however high its validation score."""
    from skray.report import rebuild, show

    rows = np.arange(300)
    a = [(0.80, 0.70, rows < 210), (0.82, 0.70, rows < 210)]
    b = [(0.60, 0.40, rows < 120), (0.61, 0.40, rows < 120)]
    c = [(0.70, 0.71, (rows < 213)), (0.71, 0.71, (rows < 213))]
    d = [(0.95, float("nan"), None)]
    run = compare_run(tmp_path, {"a": a, "b": b, "c": c, "d": d})
    table = rebuild(str(run)).set_index("method")
    assert list(table.index) == ["a", "c", "b", "d"]  # by mean validation among methods that completed
    assert table.loc["a", "vs_best"] == "best (by validation)"
    assert table.loc["b", "vs_best_gap"] == pytest.approx(0.3)
    assert table.loc["b", "vs_best_ci_low"] > 0.2
    assert table.loc["b", "vs_best"] == "beyond chance (2 seeds, 300 rows)"
    assert table.loc["b", "vs_best_per_seed"].startswith("seed 0: +0.300 [")
    assert "McNemar p 1.6e-27" in table.loc["b", "vs_best_per_seed"]  # 90 rows one way, none the other: 2 / 2**90
    assert table.loc["c", "vs_best_gap"] == pytest.approx(-0.01)
    assert table.loc["c", "vs_best"] == "within chance (2 seeds, 300 rows)"
    assert table.loc["d", "vs_best"] == "no per-row test predictions"
    saved = pd.read_csv(run / "compare.csv").set_index("method")
    assert saved.loc["b", "vs_best_gap"] == pytest.approx(0.3)
    assert "beyond chance" in (run / "compare.md").read_text()
    text = show(rebuild(str(run)))
    assert "best method by validation (a): test accuracy 0.700" in text  # not c, whose test is higher
    assert "a vs b: test accuracy +0.300 (95% CI +0.2" in text
    assert "a vs c: test accuracy -0.010" in text
    assert "a vs d: no per-row test predictions" in text
