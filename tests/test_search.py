"""The driver's side without starting Ray: resource plans, ASHA's rungs, commands that lack their section."""

import pytest

from skray.cli import main
from skray.config import parse_config
from skray.errors import ConfigError, ResourceError
from skray.search import plan_resources, run_experiment


def test_resource_plan_fits_the_cluster():
    cfg = parse_config({"train": {"num_workers": 2}})
    two_cpus = plan_resources(cfg, {"CPU": 2.0})
    assert (two_cpus.cpus_per_worker, two_cpus.max_concurrent) == (1.0, 1)
    assert plan_resources(cfg, {"CPU": 8.0}).max_concurrent == 4
    assert plan_resources(parse_config({"train": {"num_workers": 4}}), {"CPU": 2.0}).cpus_per_worker == 0.5
    with pytest.raises(ResourceError, match="GPUs"):
        plan_resources(parse_config({"train": {"use_gpu": True}}), {"CPU": 2.0})
    # A joined cluster may autoscale GPU nodes from zero (cluster.yaml): not held to what it has now.
    grows = plan_resources(parse_config({"train": {"use_gpu": True, "num_workers": 4}}), {"CPU": 0.0}, can_grow=True)
    assert (grows.cpus_per_worker, grows.max_concurrent) == (1.0, 1)


@pytest.mark.parametrize(
    ("cluster", "workers", "cpus_per_worker", "concurrent"),
    [
        ({"CPU": 96.0, "GPU": 8.0}, 2, 12.0, 4),  # 4 GPU slots of 2 workers, not 48 CPU-sized trials
        ({"CPU": 16.0, "GPU": 1.0}, 1, 16.0, 1),  # one GPU box: one trial, with every core for its worker
        ({"CPU": 8.0, "GPU": 4.0}, 1, 2.0, 4),
    ],
)
def test_gpu_workers_get_their_gpus_share_of_cores_and_trials_fit_the_gpus(
    cluster, workers, cpus_per_worker, concurrent
):
    cfg = parse_config({"train": {"use_gpu": True, "num_workers": workers}})
    plan = plan_resources(cfg, cluster)
    assert plan.cpus_per_worker == cpus_per_worker
    assert plan.max_concurrent == concurrent


def test_report_on_a_missing_dir_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_asha_rungs_are_training_steps():
    """Rungs at grace_period evaluations x reduction_factor, in steps: the same amount of training for
    every trial it compares, also for a trial resumed mid-way (whose training_iteration restarts)."""
    from skray.commands.tune import asha

    cfg = parse_config(
        {
            "train": {"max_steps": 80, "eval_every": 10},
            "search": {
                "wordings": ["a"],
                "prefix_length": {"low": 1, "high": 2},
                "lr": {"low": 1e-3, "high": 1e-2},
                "grace_period": 2,
                "reduction_factor": 2,
            },
        }
    )
    scheduler = asha(cfg)
    assert scheduler._time_attr == "step"
    assert scheduler._max_t == 80
    assert sorted(m for m, _ in scheduler._brackets[0]._rungs) == [20, 40, 80]


def test_compare_without_a_compare_section_is_a_clear_error(tiny_experiment, tmp_path):
    with pytest.raises(ConfigError, match="compare: missing"):
        run_experiment(tiny_experiment(), "compare")
