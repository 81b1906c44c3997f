"""Real Ray Train + DeepSpeed runs and a real Optuna/ASHA search, on a tiny Llama saved to disk."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from skray.cli import main
from skray.config import MlflowConfig, TrackingConfig
from skray.errors import ResourceError
from skray.results import load_results
from skray.run import run_experiment
from skray.train.checkpoint import load_trained
from tests.conftest import assert_one_mlflow_run_per_trial, assert_study_matches, tensorboard_tags

pytestmark = pytest.mark.slow


# SK-Prompt at ZeRO 3 trains in test_zero3_never_holds_the_whole_backbone_from_load_on (one run fewer).
CASES = {
    "zero2-prefix-balanced": {"train__zero_stage": 2, "method__kind": "sk_prefix", "train__class_weights": "balanced"},
    "zero3-prefix-bf16-offload-params": {  # the frozen backbone's partitions offloaded (ZeRO-Infinity)
        "train__zero_stage": 3,
        "method__kind": "sk_prefix",
        "train__precision": "bf16",
        "train__offload": "params",
    },
    "zero-auto-prompt": {"train__zero_stage": "auto", "method__kind": "sk_prompt"},
    "encoder-minilm-zero2": {
        "train__zero_stage": 2,
        "method__kind": "sk_prefix",
        "backbone__name": "minilm-l6",
        "method__head": "linear",
        "method__label_words": None,
        "data__template": "{text}",
    },
}


@pytest.mark.parametrize("case", CASES)
def test_train_with_two_deepspeed_workers(ray_cluster, tiny_experiment, tmp_path, case):
    cfg = tiny_experiment(**CASES[case])
    kind = cfg.method.kind
    stage = (
        0 if cfg.train.zero_stage == "auto" else cfg.train.zero_stage
    )  # auto: a tiny model fits with nothing partitioned
    run_dir, table = run_experiment(cfg, "train")
    run_dir = Path(run_dir)
    row = table.iloc[0]
    assert len(table) == 1
    assert row.status == "completed", table.to_dict("records")
    assert 0 <= row.test_acc <= 1
    assert row.zero_shot_acc >= 0
    assert 0 <= row.zero_shot_test_acc <= 1  # the step-0 model on the test rows too
    assert 0.5 <= row.majority_test_acc <= 1  # two labels: the majority holds at least half
    assert row.trainable_params > 0

    reports = [json.loads(line) for line in next(run_dir.glob("*/result.json")).read_text().splitlines()]
    assert [r["step"] for r in reports] == [0, 2, 4]
    assert all(r["world_size"] == 2 and r["zero_stage"] == stage and r["prompt_passes"] == 1 for r in reports)
    assert all(r["offload"] == cfg.train.offload for r in reports)
    assert all(r["est_mem_mb"] > 0 and r["param_bytes_per_worker"] > 0 for r in reports)

    checkpoints = [p for p in run_dir.glob("train_*/checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 1
    weights = load_file(checkpoints[0] / "adapter.safetensors")
    assert sum(t.numel() for t in weights.values()) == row.trainable_params  # adapter + head only, never the backbone
    model, meta = load_trained(checkpoints[0])  # the trained model comes back from backbone name + adapter
    assert meta["method"]["kind"] == kind
    assert meta["label_names"] == ["rotten", "fresh"]
    assert meta["precision"] == ("bf16" if cfg.train.precision == "bf16" else "fp32")  # auto on CPUs: fp32
    trained = dict(model.named_parameters())  # loaded in the run's precision; the file holds the fp32 masters
    assert all(torch.equal(trained[n], t.to(trained[n].dtype)) for n, t in weights.items())
    assert (run_dir / "results.csv").exists()
    assert (run_dir / "results.parquet").exists()

    # The resume state: DeepSpeed's files from every rank in the one checkpoint, frozen weights left out.
    resume = [f for f in (checkpoints[0] / "deepspeed").rglob("*") if f.is_file()]
    if stage > 0:
        for r in (0, 1):  # bf16 runs prefix the names with "bf16_"
            assert any(f.name.endswith(f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt") for f in resume), [
                f.name for f in resume
            ]
    assert sum(f.stat().st_size for f in resume) < reports[-1]["backbone_bytes"] / 2
    unlisted = [
        f.name for f in pickled(run_dir) if f not in resume and not any(fnmatch(f.name, p) for p in TUNE_PICKLES)
    ]
    assert not unlisted, f"docs/SECURITY.md's list of pickled files is out of date: {unlisted}"


def test_zero3_never_holds_the_whole_backbone_from_load_on(ray_cluster, tiny_experiment, wide_llama_dir):
    """Two ZeRO-3 workers: built partitioned (zero.Init), prompt pass and verbalizer one module at a
    time, then the engine with about one module live: no rank's parameter bytes ever reach 60% of
    the backbone (loading it whole and partitioning afterwards starts at 100%)."""
    cfg = tiny_experiment(
        train__zero_stage=3, method__kind="sk_prompt", backbone__name=wide_llama_dir, train__max_steps=2
    )
    run_dir, table = run_experiment(cfg, "train")
    assert table.iloc[0].status == "completed", table.to_dict("records")
    reports = [json.loads(line) for line in next(Path(run_dir).glob("*/result.json")).read_text().splitlines()]
    whole = reports[-1]["backbone_bytes"]
    assert reports[-1]["world_size"] == 2
    assert whole > 50e6 * 4  # the 52M-parameter backbone in fp32
    peak = max(r["peak_param_bytes_per_worker"] for r in reports)
    assert peak < 0.6 * whole, f"a rank held {peak / whole:.0%} of the backbone's parameter bytes"
    assert reports[-1]["param_bytes_per_worker"] < 0.55 * whole  # its half, and the small persisted tensors


# What docs/SECURITY.md says holds pickles: Ray Tune's state (unpickled by Tuner.restore when a sweep
# resumes) and DeepSpeed's resume files (torch.load(weights_only=False) when a trial resumes).
# skray's own files (experiment.json, tables, adapter.safetensors, skray.json) hold none.
TUNE_PICKLES = (
    "tuner.pkl",
    "params.pkl",
    "searcher-state-*.pkl",
    "experiment_state-*.json",
    "basic-variant-state-*.json",
)


def pickled(run_dir: Path) -> list[Path]:
    """Files holding pickled Python objects: pickle streams, torch.save zips, and JSON with cloudpickle inside."""
    found = []
    for f in run_dir.rglob("*"):
        if f.is_file():
            head = f.read_bytes()[:4]
            if (
                head[:1] == b"\x80"
                or head == b"PK\x03\x04"
                or (f.suffix == ".json" and b"CLOUDPICKLE" in f.read_bytes())
            ):
                found.append(f)
    return found


def test_tune_runs_three_optuna_trials_and_report_rebuilds(ray_cluster, tiny_experiment, tmp_path, capsys):
    """Two objectives: the study on disk holds every trial as the table does (ASHA-stopped ones
    PRUNED, never COMPLETE with truncated scores), and pareto.csv exactly the non-dominated trials."""
    cfg = tiny_experiment(
        search__objectives={"best_val_acc": "max", "trainable_params": "min"},
        search__screen={"keep": 2},
        search__pack=1,
    )
    mlflow_store = f"sqlite:///{tmp_path}/mlflow.db"
    tracking = TrackingConfig(tensorboard=True, mlflow=MlflowConfig(tracking_uri=mlflow_store))
    cfg = cfg.model_copy(update={"tracking": tracking})
    run_dir, table = run_experiment(cfg, "tune")
    run_dir = Path(run_dir)
    assert len(table) == 3
    assert set(table.status) <= {"completed", "early_stopped"}
    assert "completed" in set(table.status)
    screen = pd.read_csv(run_dir / "screen.csv")  # every wording scored at step 0, best first; the best 2 searched
    assert sorted(screen.wording) == sorted(cfg.search.wordings)
    assert screen.screen_acc.is_monotonic_decreasing
    assert screen.kept.tolist() == [True, True, False]
    assert table.wording.isin(screen.wording[screen.kept]).all()
    assert table.prefix_length.between(2, 6).all()
    assert table.lr.between(1e-4, 1e-2).all()

    by_trial = assert_study_matches(run_dir, table)
    for row in table[table.status == "completed"].itertuples():
        assert by_trial[row.trial].values == [pytest.approx(row.best_val_acc), row.trainable_params]
    done = table[table.status == "completed"]
    front = pd.read_csv(run_dir / "pareto.csv", dtype={"trial": str})  # an id like 799113e1 reads as a number
    dominated = {
        a.trial
        for a in done.itertuples()
        for b in done.itertuples()
        if b.best_val_acc >= a.best_val_acc
        and b.trainable_params <= a.trainable_params
        and (b.best_val_acc > a.best_val_acc or b.trainable_params < a.trainable_params)
    }
    assert set(front.trial) == set(done.trial) - dominated
    assert (run_dir / "pareto.png").exists()
    for plot in ("accuracy_vs_params.png", "accuracy_vs_time.png", "curves.png"):
        assert (run_dir / plot).stat().st_size > 10_000, plot
    events = list(run_dir.glob("*/events.out.tfevents.*"))  # tracking.tensorboard: one file per trial
    assert len(events) == 3
    assert "ray/tune/val_acc" in tensorboard_tags(events[0])
    assert_one_mlflow_run_per_trial(mlflow_store, cfg.name, table)

    # The same run read back through a URI (what s3:// and gs:// storage go through).
    assert load_results(f"file://{run_dir}").equals(table)

    # An interrupted run: no end marker, and the last report of a trial cut off mid-line.
    (run_dir / "finished").unlink()
    result = next(run_dir.glob("*/result.json"))
    result.write_text(result.read_text()[:-20])
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    again = load_results(run_dir)
    assert len(again) == 3
    assert "interrupted" in set(again.status)
    assert "interrupted" in out


def test_request_that_cannot_fit_fails_at_once(ray_cluster, tiny_experiment, tmp_path, capsys):
    cfg = tiny_experiment(train__num_workers=4, train__cpus_per_worker=1.0)
    with pytest.raises(ResourceError, match="needs 4 CPUs but the Ray cluster has 2"):
        run_experiment(cfg, "tune")


def test_more_workers_than_memory_holds_fail_with_one_line_before_any_run_starts(ray_cluster, tmp_path, capsys):
    """The new user's `--set train.num_workers=64` on a small machine: exit 2 before any worker starts
    (no run directory is made, nothing is left to clean up)."""
    code = main(
        ["train", "experiments/quickstart.yaml", "--set", "train.num_workers=64", "--set", f"storage_path={tmp_path}"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith("skray: error: train.num_workers=64 workers need at least")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("pack", [1, 2])
def test_ctrl_c_keeps_what_was_reported_and_exits_130(tiny_experiment, tmp_path, pack):
    """A real `skray tune` process interrupted mid-trial, solo or packed (a slot reports only at its
    end): exit 130, finished reports kept, trial marked interrupted, nothing but skray's lines."""
    cfg = tiny_experiment(train__max_steps=400, train__eval_every=2, search__pack=pack)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "skray.cli", "tune", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not any(
        len(p.read_text().splitlines()) >= 2 for p in tmp_path.glob("*/*/result.json")
    ):
        time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted before every trial ended" in err
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    # The quiet console: skray's own lines, none of Ray's reports or worker logs, which went to files.
    assert re.search(r"^trial \w+ started: method='sk_prefix', wording=", out, re.M), out
    step = r"^trial \w+ step 2/400: val acc 0\.\d+ \(f1 0\.\d+\), [\d.]+ steps/s  \[0/3 trials ended"
    assert re.search(step, out, re.M), out
    noises = ("RayTrainWorker", "Reporting training result", "Trial status", "(pid=", "Could not fetch")
    for noise in (*noises, "Tuner.restore"):  # Tune's resume advice: skray's own line says how to go on
        assert noise not in out + err
    logs = {p.name: p.read_text() for p in (run_dir / "logs").iterdir()}
    assert any(name.endswith("-rank1.log") for name in logs), sorted(logs)
    assert pack > 1 or any("Reporting training result" in text for text in logs.values())  # a slot reports at its end
    table = load_results(run_dir)
    assert "interrupted" in set(table.status)
    assert not (run_dir / "finished").exists()
    assert table.zero_shot_acc.notna().any()  # the reports made before Ctrl-C are in the table


def test_private_ray_finds_itself_beside_another_ray(ray_cluster):
    """With a second Ray on the machine, Ray's state API inside ours still finds ours (Ray Train's
    placement-group cleaner depends on it; without, a session's second run waits forever)."""
    import ray

    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import ray, time; ray.init(address='local', num_cpus=1); print('up', flush=True); time.sleep(300)",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert other.stdout.readline().strip() == "up"

        @ray.remote(num_cpus=0)
        def nodes_seen_from_inside() -> int:
            from ray.util.state import list_nodes

            return len(list_nodes())

        assert ray.get(nodes_seen_from_inside.remote(), timeout=120) == 1
    finally:
        other.kill()
        other.wait()


def test_private_rays_workers_run_at_the_drivers_priority(ray_cluster):
    """Ray starts workers 15 nicer than itself; skray's own Ray keeps them at the driver's priority,
    so a training worker does not yield its CPU to every other busy process on the machine."""
    import ray

    @ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.nice(0)

    assert ray.get(niceness.remote(), timeout=120) == os.nice(0)


def test_a_sweep_frees_the_placement_group_an_ended_trials_controller_left(ray_cluster, tmp_path):
    """Ray keeps a placement group whose creator actor died for as long as the job lives, and Ray
    Train's controller, ended by Tune mid-retry, can make one in its last moments: the next trial then
    waited for ever. Here the first trial leaves such a group (1 of the 2 CPUs) as that controller did;
    the second needs both CPUs, and gets them because skray's reaper frees the orphan. What the reaper
    must keep alive goes on meanwhile: Tune's own groups for its trials (the driver's) and the group the
    second trial waits on (a live actor's)."""
    import ray
    from ray import tune
    from ray.util.placement_group import placement_group, remove_placement_group

    from skray.search import PlacementGroupReaper

    @ray.remote(num_cpus=0)
    class Controller:
        def reserve(self) -> None:
            ray.get(placement_group([{"CPU": 1}]).ready())

    def trial(config: dict) -> None:
        if config["i"] == 0:
            controller = Controller.remote()
            ray.get(controller.reserve.remote())
            ray.kill(controller)
            tune.report({"placed": True})
        else:
            both = placement_group([{"CPU": 1}, {"CPU": 1}])
            tune.report({"placed": both.wait(timeout_seconds=60)})
            remove_placement_group(both)

    tuner = tune.Tuner(
        tune.with_resources(trial, {"CPU": 0, "memory": 1}),
        param_space={"i": tune.grid_search([0, 1])},
        tune_config=tune.TuneConfig(max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path), callbacks=[PlacementGroupReaper(every_s=0.5)]),
    )
    results = tuner.fit()
    assert [r.metrics["placed"] for r in results] == [True, True]


# Run in its own process: a private Ray whose every worker first runs the hook, then one `skray train` trial.
HELD_FINAL_REPORT = '''
import sys

import yaml

from skray.cluster import start_private_ray
from skray.config import parse_config
from skray.run import run_experiment

MARKER = sys.argv[2]  # the hook below runs in Ray's workers, with their own argv: it takes this value along


def hold_the_final_report():
    """Ray 2.60's poll of a Tune trial's two report queues, but the final report taken from Ray Train's
    queue is held until Tune's own result queue holds something (or 10 s): the order that hung."""
    import queue
    import time
    from pathlib import Path

    from ray.train._internal import session
    from ray.util import queue as ray_queue

    def poll(self, block):
        if self._inter_actor_queue is not None:
            try:
                item = self._inter_actor_queue.get(block=block, timeout=session._RESULT_FETCH_TIMEOUT)
                if item:
                    if item.get("done"):
                        deadline = time.monotonic() + 10
                        while self.result_queue.empty() and time.monotonic() < deadline:
                            time.sleep(0.05)
                        Path(MARKER).write_text("overtaken" if not self.result_queue.empty() else "held")
                    self.continue_lock.release()
                    self.report(item)
            except ray_queue.Empty:
                pass
        try:
            return self.result_queue.get(block=block, timeout=session._RESULT_FETCH_TIMEOUT)
        except queue.Empty:
            return None

    session._TrainSession._get_result_from_queues = poll


start_private_ray(
    num_cpus=2, num_gpus=0, log_to_driver=False, runtime_env={"worker_process_setup_hook": hold_the_final_report}
)
run_dir, table = run_experiment(parse_config(yaml.safe_load(open(sys.argv[1]))), "train", verbose=False)
print(table.status.iloc[0], table.test_acc.iloc[0])
'''


def test_a_trial_ends_with_its_final_report_whatever_order_rays_two_report_queues_are_read_in(
    tiny_experiment, tmp_path
):
    """Ray Train can return from fit() while the trial's final report still waits in the queue between
    its controller and the trial; the trial must not end (Tune's end marker) before that report is
    handed on. Forced here: the trial's main thread holds the final report it took until the end marker
    could have overtaken it. Before skray waited for it, that run hung with the report unlogged."""
    cfg = tiny_experiment(train__num_workers=1)
    path, marker = tmp_path / "exp.yaml", tmp_path / "hold"
    path.write_text(yaml.safe_dump(cfg.model_dump()))
    proc = subprocess.Popen(
        [sys.executable, "-c", HELD_FINAL_REPORT, str(path), str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=300)  # a hang's limit: the trial takes seconds
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its Ray too, had it hung
    assert proc.returncode == 0, err[-2000:]
    assert marker.read_text() == "held"  # the end marker waited for the final report
    status, test_acc = out.splitlines()[-1].split()  # after the run's progress lines
    assert status == "completed"
    assert 0 <= float(test_acc) <= 1
