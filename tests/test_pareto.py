"""The Pareto front of a search, on a hand-made table whose front is known."""

import pandas as pd
import pytest

from skray.pareto import hypervolume, pareto_front, reference_point, write_pareto

TWO = [("best_val_acc", "max"), ("trainable_params", "min")]
ROWS = [  # trial, accuracy (max), trainable parameters (min), samples/s (max), status
    ("a", 0.90, 100, 10.0, "completed"),  # front: the most accurate
    ("b", 0.80, 50, 10.0, "completed"),  # front
    ("c", 0.80, 50, 10.0, "completed"),  # front: ties with b, neither dominates
    ("d", 0.70, 60, 50.0, "completed"),  # dominated by b (and c) in two objectives; the fastest in three
    ("e", 0.60, 10, 10.0, "completed"),  # front: the cheapest
    ("f", 0.95, 5, 99.0, "early_stopped"),  # would dominate all, but ASHA stopped it: never on the front
    ("g", 0.85, 100, 10.0, "completed"),  # dominated by a: as many parameters, less accurate
    ("h", None, None, None, "error"),
]


@pytest.fixture
def table() -> pd.DataFrame:
    frame = pd.DataFrame(ROWS, columns=["trial", "best_val_acc", "trainable_params", "samples_per_s", "status"])
    return frame.assign(wording=[f"wording {t}" for t in frame["trial"]])


def test_front_is_the_non_dominated_completed_trials(table):
    assert pareto_front(table, TWO)["trial"].tolist() == ["a", "b", "c", "e"]
    three = [*TWO, ("samples_per_s", "max")]
    assert pareto_front(table, three)["trial"].tolist() == ["a", "b", "c", "d", "e"]
    assert pareto_front(table, TWO[:1])["trial"].tolist() == ["a"]


def test_hypervolume_of_a_known_front(table):
    front = pareto_front(table, TWO)
    # Staircase from (0.5, 110): 0.1 x 10 (acc 0.9-0.8) + 0.2 x 60 (0.8-0.6) + 0.1 x 100 (0.6-0.5).
    assert hypervolume(front, TWO, [0.5, 110]) == pytest.approx(23.0)
    assert reference_point(table, TWO) == [0.6, 100.0]  # the worst of every trial, stopped ones too
    assert hypervolume(front, TWO, reference_point(table, TWO)) == pytest.approx(10.0)  # b alone adds area
    assert hypervolume(front.iloc[:0], TWO, [0.5, 110]) == 0.0


def test_write_pareto(table, tmp_path):
    front = write_pareto(table, TWO, str(tmp_path))
    written = pd.read_csv(tmp_path / "pareto.csv")
    assert written["trial"].tolist() == ["a", "b", "c", "e"]
    pd.testing.assert_frame_equal(written, front, check_dtype=False)
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_pareto(table, [*TWO, ("samples_per_s", "max")], str(tmp_path / "three"))  # two panels
    assert (tmp_path / "three" / "pareto.png").stat().st_size > 0
    write_pareto(table, TWO[:1], str(tmp_path / "one"))  # one objective: the best trial, no picture
    assert not (tmp_path / "one" / "pareto.png").exists()
    assert pd.read_csv(tmp_path / "one" / "pareto.csv")["trial"].tolist() == ["a"]


def test_tune_plots_of_a_run_interrupted_before_any_trial_ended(tmp_path):
    """Only the learning curves can be drawn: no trial has a final cost yet (a log axis would fail)."""
    from skray.plots import plot_tune

    trials = pd.DataFrame(
        {
            "trial": ["a"],
            "status": ["interrupted"],
            "best_val_acc": [0.6],
            "trainable_params": [None],
            "train_s": [None],
        }
    )
    curves = pd.DataFrame({"trial": ["a", "a"], "step": [0, 2], "val_acc": [0.5, 0.6]})
    written = plot_tune(trials, curves, str(tmp_path))
    assert [p.rsplit("/", 1)[-1] for p in written] == ["curves.png"]


def test_tune_plots_of_a_run_cut_before_its_first_evaluation_say_nothing(tmp_path, recwarn):
    """No curve yet: an empty plot, and no matplotlib warning about a legend with nothing in it."""
    from skray.plots import plot_tune

    trials = pd.DataFrame({"trial": ["a"], "status": ["interrupted"], "best_val_acc": [None]})
    trials = trials.assign(trainable_params=None, train_s=None)
    curves = pd.DataFrame({"trial": [], "step": [], "val_acc": []})
    assert [p.rsplit("/", 1)[-1] for p in plot_tune(trials, curves, str(tmp_path))] == ["curves.png"]
    assert not [str(w.message) for w in recwarn if "legend" in str(w.message)]
