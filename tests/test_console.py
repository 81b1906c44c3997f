"""The run's own progress lines, driven as Tune drives its callbacks."""

from types import SimpleNamespace

from skray.console import Progress, output_to


def test_progress_says_each_start_evaluation_and_end_with_where_the_sweep_stands(capsys):
    progress = Progress(trials=2, steps_per_trial=10, key="acc")
    a = SimpleNamespace(trial_id="a", config={"method": "sk_prefix", "wording": "w", "lr": 0.003}, last_result={})
    b = SimpleNamespace(trial_id="b", config={"method": "sk_prompt", "point": {"num_workers": 2}}, last_result={})
    progress.on_trial_start(0, [], a)
    progress.on_trial_start(0, [], b)
    progress.on_trial_result(0, [], a, {"step": 5, "val_acc": 0.75})
    a.last_result = {"step": 10, "test_acc": 0.8}
    progress.on_trial_result(0, [], a, a.last_result | {"val_acc": 0.8})
    progress.on_trial_complete(0, [], a)
    b.last_result = {"step": 5}
    progress.on_trial_complete(0, [], b)  # ASHA stopped it: its last 5 steps will not run
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "trial a started: method='sk_prefix', wording='w', lr=0.003"
    assert lines[1] == "trial b started: method='sk_prompt', point=2"
    assert lines[2].startswith("trial a step 5/10: val acc 0.750, ")
    assert "  [0/2 trials ended, 5/20 steps, 0s, about 0s left]" in lines[2]
    assert lines[4].startswith("trial a completed: test acc 0.800  [1/2 trials ended, 10/20 steps")
    assert lines[5].startswith("trial b stopped early at step 5 (ASHA)  [2/2 trials ended, 20/20 steps")


def test_a_resumed_run_counts_time_and_pace_from_its_resume(capsys, monkeypatch):
    """Tune unpickles the callback from tuner.pkl on a resume: the hours the run stood still are
    neither elapsed time nor pace (the ETA comes from the steps this driver ran)."""
    import pickle

    import skray.console

    now = [0.0]
    monkeypatch.setattr(skray.console.time, "monotonic", lambda: now[0])
    progress = Progress(trials=1, steps_per_trial=40, key="acc")
    a = SimpleNamespace(trial_id="a", config={}, last_result={})
    progress.on_trial_start(0, [], a)
    now[0] = 1.0
    progress.on_trial_result(0, [], a, {"step": 10, "val_acc": 0.5})
    now[0] = 10_000.0
    resumed = pickle.loads(pickle.dumps(progress))
    now[0] = 10_010.0
    resumed.on_trial_result(0, [], a, {"step": 20, "val_acc": 0.6})
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.endswith("1.00 steps/s  [0/1 trials ended, 20/40 steps, 10s, about 20s left]"), last


def test_a_resumed_run_counts_the_trials_that_ended_before_it_not_as_its_pace(capsys, monkeypatch):
    """tuner.pkl holds the callback as the run started: a resume learns from the trials Tune restored
    which ended meanwhile and how far the others got, so neither the count nor the ETA starts from 0."""
    import pickle

    import skray.console

    now = [0.0]
    monkeypatch.setattr(skray.console.time, "monotonic", lambda: now[0])
    started = pickle.dumps(Progress(trials=3, steps_per_trial=40, key="acc"))
    resumed = pickle.loads(started)
    ended = SimpleNamespace(trial_id="a", config={}, status="TERMINATED", last_result={"step": 40})
    halfway = SimpleNamespace(trial_id="b", config={}, status="PENDING", last_result={"step": 20})
    fresh = SimpleNamespace(trial_id="c", config={}, status="PENDING", last_result={})
    trials = [ended, halfway, fresh]
    resumed.on_trial_start(0, trials, halfway)
    now[0] = 10.0
    resumed.on_trial_result(0, trials, halfway, {"step": 30, "val_acc": 0.6})
    fresh.status = "RUNNING"
    resumed.on_trial_start(0, trials, fresh)
    halfway.status, halfway.last_result = "TERMINATED", {"step": 30}  # ASHA stopped it
    resumed.on_trial_complete(0, trials, halfway)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].endswith("[1/3 trials ended, 70/120 steps, 10s, about 50s left]"), lines[1]
    assert lines[-1].endswith("[2/3 trials ended, 80/120 steps, 10s, about 40s left]"), lines[-1]


def test_output_to_takes_the_file_descriptors_and_gives_them_back(tmp_path, capfd):
    import os

    with output_to(str(tmp_path / "logs" / "w.log")):
        print("to the file", flush=True)
        os.write(2, b"from C\n")
    print("to the terminal")
    assert (tmp_path / "logs" / "w.log").read_text() == "to the file\nfrom C\n"
    assert capfd.readouterr().out == "to the terminal\n"


def test_quiet_tune_takes_rays_legacy_reporter_for_the_block_only(monkeypatch):
    import os

    from skray.console import tune_output

    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    with tune_output(verbose=False):
        assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"  # the new engine prints a header at any verbosity
    assert "RAY_AIR_NEW_OUTPUT" not in os.environ
    with tune_output(verbose=True):
        assert "RAY_AIR_NEW_OUTPUT" not in os.environ
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")  # the user's own setting wins, and stays
    with tune_output(verbose=False):
        assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1"
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1"


def test_quiet_tune_drops_tunes_restore_advice_on_ctrl_c_and_nothing_else(caplog):
    """Tune's warning on Ctrl-C names ``Tuner.restore``; a skray user goes on with the same command,
    which skray says. Quiet, that one warning is dropped; Tune's other warnings, and it outside the
    block or with -v, pass (the real Ctrl-C: tests/test_ray_runs.py)."""
    import logging

    from skray.console import tune_output

    tune_log = logging.getLogger("ray.tune.tune")
    interrupted = "Experiment has been interrupted, but the most recent state was saved.\nResume experiment with: X"
    with caplog.at_level(logging.WARNING, logger="ray.tune.tune"):
        with tune_output(verbose=False):
            tune_log.warning(interrupted)
            tune_log.warning("another warning")
        with tune_output(verbose=True):
            tune_log.warning(interrupted)
        tune_log.warning(interrupted)
    assert [r.getMessage() for r in caplog.records] == ["another warning", interrupted, interrupted]


def test_progress_names_the_selecting_metric_first_and_the_other_beside_it(capsys):
    progress = Progress(trials=1, steps_per_trial=4, key="f1")  # train.select_by: macro_f1
    a = SimpleNamespace(trial_id="a", config={}, last_result={})
    progress.on_trial_start(0, [], a)
    progress.on_trial_result(0, [], a, {"step": 2, "val_acc": 0.75, "val_f1": 0.5})
    a.last_result = {"step": 4, "test_acc": 0.8, "test_f1": 0.625}
    progress.on_trial_complete(0, [], a)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("trial a step 2/4: val f1 0.500 (acc 0.750), ")
    assert lines[2].startswith("trial a completed: test f1 0.625 (acc 0.800)  [1/1 trials ended")
