"""A run's steps, each alone (skray.run): its directory, what its trials run, the finished mark.
The whole path runs in tests/test_ray_runs.py and tests/test_faults.py."""

import json
from pathlib import Path

from skray.commands import COMMANDS
from skray.commands.base import Command
from skray.run import RunDir, RunPlan, find_run_dir, mark_finished, prepare_trials


class Preparing(Command):
    """A command whose preparation changes what the trials run (as a wording screen does)."""

    name = "train"
    calls = 0

    def prepare(self, cfg, run_dir, cpus, search):
        Preparing.calls += 1
        return cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 0.005})})


def _plan(cfg, root: Path) -> RunPlan:
    return RunPlan(cfg, str(root), cpus_per_worker=1.0, max_concurrent=1, workers=2)


def test_a_new_run_records_its_config_and_what_preparing_made_of_it(tiny_experiment, tmp_path):
    cfg = tiny_experiment()
    run = find_run_dir(_plan(cfg, tmp_path), "train", retry_errored=False)
    assert run == RunDir(run.path, resumed=False, restore=False)
    assert Path(run.path).name.startswith("tiny-train-")
    ready = prepare_trials(run, _plan(cfg, tmp_path), Preparing())
    assert ready.train.lr == 0.005
    started = json.loads((Path(run.path) / "experiment.json").read_text())
    assert started == {"command": "train", "config": json.loads(json.dumps(cfg.model_dump()))}
    assert json.loads((Path(run.path) / "prepared.json").read_text())["train"]["lr"] == 0.005


def test_a_run_cut_before_its_trials_is_found_again_and_not_prepared_twice(tiny_experiment, tmp_path):
    """The same command on the same config finds the unfinished run; what it prepared is read back."""
    cfg = tiny_experiment()
    first = find_run_dir(_plan(cfg, tmp_path), "train", retry_errored=False)
    prepare_trials(first, _plan(cfg, tmp_path), Preparing())
    again = find_run_dir(_plan(cfg, tmp_path), "train", retry_errored=False)
    assert again == RunDir(first.path, resumed=True, restore=False)  # no trial had started: nothing to restore
    calls = Preparing.calls
    assert prepare_trials(again, _plan(cfg, tmp_path), Preparing()).train.lr == 0.005
    assert Preparing.calls == calls
    other = find_run_dir(_plan(tiny_experiment(train__lr=0.002), tmp_path), "train", retry_errored=False)
    assert not other.resumed  # another config: a new run


def test_a_run_is_marked_finished_only_when_it_reached_its_end(tiny_experiment, tmp_path):
    cfg = tiny_experiment()
    run = find_run_dir(_plan(cfg, tmp_path), "train", retry_errored=False)
    prepare_trials(run, _plan(cfg, tmp_path), COMMANDS["train"])
    mark_finished(run.path, False)
    assert not (Path(run.path) / "finished").exists()
    mark_finished(run.path, True)
    assert (Path(run.path) / "finished").exists()
    mark_finished(run.path, False)  # a resumed run, until it reaches its end again
    assert not (Path(run.path) / "finished").exists()
