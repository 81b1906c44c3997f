"""The driver's side without starting Ray: resource plans, ASHA's rungs, commands that lack their section."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from skray.cli import main
from skray.cluster import Capacity, capacity, launcher_gpus, orphaned
from skray.commands import COMMANDS
from skray.config import parse_config, resolve_device
from skray.errors import ConfigError, ResourceError
from skray.run import run_experiment
from skray.search import plan_resources


def cluster(*nodes: tuple[float, float], grows: bool = False) -> Capacity:
    """A Ray cluster of these (CPUs, GPUs) nodes, as ``capacity`` describes it."""
    cpus, gpus = (sum(node[i] for node in nodes) for i in (0, 1))
    return Capacity({"CPU": float(cpus), "GPU": float(gpus)}, grows=grows, nodes=nodes)


def test_resource_plan_fits_the_cluster():
    cfg = parse_config({"train": {"num_workers": 2}})
    two_cpus = plan_resources(cfg, cluster((2, 0)))
    assert (two_cpus.cpus_per_worker, two_cpus.max_concurrent) == (1.0, 1)
    grid = parse_config({"train": {"num_workers": 2}, "compare": {"methods": ["sk_prefix", "lora"]}})
    assert plan_resources(grid, cluster((8, 0)), command=COMMANDS["compare"]).max_concurrent == 4
    # A lone trial gets every core (torch's threads follow), not one per worker.
    assert plan_resources(parse_config({"train": {"num_workers": 1}}), cluster((2, 0))).cpus_per_worker == 2.0
    assert plan_resources(cfg, cluster((8, 0))).cpus_per_worker == 4.0
    assert plan_resources(parse_config({"train": {"num_workers": 4}}), cluster((2, 0))).cpus_per_worker == 0.5
    with pytest.raises(ResourceError, match="GPUs"):
        plan_resources(parse_config({"train": {"use_gpu": True}}), cluster((2, 0)))
    # A joined cluster may autoscale GPU nodes from zero (cluster.yaml): not held to what it has now.
    grows = plan_resources(parse_config({"train": {"use_gpu": True, "num_workers": 4}}), cluster(grows=True))
    assert (grows.cpus_per_worker, grows.max_concurrent) == (1.0, 1)


def _fake_cluster(monkeypatch, node_types=None, autoscaler_report=False, launcher=None):
    """What Ray would report for a joined cluster: resources now, v2 node types, a v1 autoscaler's status."""
    import ray
    from ray._private.state import state
    from ray.experimental import internal_kv

    import skray.cluster

    # A `ray start` head runs Ray's read-only autoscaler (a type per node); `ray up`'s names its types.
    types = {"10.0.0.1": "head"} if autoscaler_report else {"8a3f": "node_8a3f"}
    status = {"load_metrics_report": {}, "autoscaler_report": {"node_type_mapping": types}}
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})  # a CPU-only head, no GPU node yet
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 8.0, "memory": 2.0**34}}])
    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: node_types)
    monkeypatch.setattr(internal_kv, "_internal_kv_get", lambda key: json.dumps(status).encode())
    monkeypatch.setattr(skray.cluster, "LAUNCHER_CONFIG", Path(launcher or "/nonexistent/ray_bootstrap_config.yaml"))


def _launcher_yaml(tmp_path, filled: bool) -> Path:
    """The repository's cluster.yaml as `ray up` leaves it on the head, resources filled in (or not)."""
    config = yaml.safe_load(Path("cluster.yaml").read_text())
    if filled:  # what the AWS launcher writes for g5.12xlarge and p4d.24xlarge
        config["available_node_types"]["gpu_4x_a10g"]["resources"] = {"CPU": 48, "GPU": 4}
        config["available_node_types"]["gpu_8x_a100"]["resources"] = {"CPU": 96, "GPU": 8}
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_auto_on_an_autoscaling_cluster_decides_from_its_node_types(monkeypatch, tmp_path):
    """cluster.yaml's head has no GPU and GPU nodes start at zero: auto must not read that as "CPU"."""
    auto = parse_config({"train": {"num_workers": 2}}).train
    assert launcher_gpus(_launcher_yaml(tmp_path, filled=True)) == 4 * 4 + 8 * 2
    assert launcher_gpus(_launcher_yaml(tmp_path, filled=False)) is None

    _fake_cluster(monkeypatch, autoscaler_report=True, launcher=_launcher_yaml(tmp_path, filled=True))
    room = capacity(joined=True)
    assert (room.grows, room.gpus) == (True, 32.0)
    assert resolve_device(auto, room.gpus, 2).use_gpu is True
    assert resolve_device(auto, room.gpus, 2).precision == "auto"  # the GPU workers settle it

    _fake_cluster(monkeypatch, node_types={"CPU": 200, "GPU": 8})  # autoscaler v2 / KubeRay node groups
    assert capacity(joined=True).gpus == 8.0

    _fake_cluster(monkeypatch, node_types={"CPU": 200})  # CPU node types only: CPUs, as before
    assert resolve_device(auto, capacity(joined=True).gpus, 2).use_gpu is False


def test_auto_is_refused_where_the_node_types_are_unknown(monkeypatch):
    _fake_cluster(monkeypatch, autoscaler_report=True)  # driver not on the head: no launcher YAML to read
    room = capacity(joined=True)
    assert room.grows
    assert room.gpus is None
    with pytest.raises(ConfigError, match=r"train.use_gpu auto: .*autoscales.*set train.use_gpu true"):
        resolve_device(parse_config({}).train, room.gpus, 2)
    assert resolve_device(parse_config({"train": {"use_gpu": True}}).train, room.gpus, 2).use_gpu is True
    # What the node types reach counts, not how many GPU nodes happen to be up.
    assert Capacity({"GPU": 4.0}, grows=True, max_gpus=None).gpus is None
    assert Capacity({"GPU": 4.0}, grows=True, max_gpus=8.0).gpus == 8.0


def test_a_ray_start_head_without_autoscaler_is_a_fixed_cluster(monkeypatch):
    """`ray start --head` on a laptop (the job-submit path): planned from what it has, CPUs under auto."""
    _fake_cluster(monkeypatch)
    room = capacity(joined=True)
    assert (room.grows, room.gpus) == (False, 0.0)
    assert resolve_device(parse_config({}).train, room.gpus, 2).use_gpu is False


@pytest.mark.parametrize(
    ("nodes", "workers", "cpus_per_worker", "concurrent"),
    [
        ([(96, 8)], 2, 12.0, 4),  # 4 GPU slots of 2 workers, not 48 CPU-sized trials
        ([(16, 1)], 1, 16.0, 1),  # one GPU box: one trial, with every core for its worker
        ([(8, 4)], 1, 2.0, 4),
        # A CPU-only head beside a GPU node: the GPU node's 8 cores, not the cluster's 24 (no node holds them)
        ([(16, 0), (8, 1)], 1, 8.0, 1),
        ([(16, 0), (96, 8), (16, 4)], 2, 4.0, 6),  # every GPU node holds its GPUs' bundles: the smallest share
    ],
)
def test_gpu_workers_get_their_gpus_share_of_cores_and_trials_fit_the_gpus(nodes, workers, cpus_per_worker, concurrent):
    cfg = parse_config({"train": {"use_gpu": True, "num_workers": workers}})
    plan = plan_resources(cfg, cluster(*nodes))
    assert plan.cpus_per_worker == cpus_per_worker
    assert plan.max_concurrent == concurrent


def test_capacity_lists_each_live_nodes_cpus_and_gpus(monkeypatch):
    import ray

    head = {"Alive": True, "Resources": {"CPU": 16.0, "memory": 2.0**34}}
    gpu_node = {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0, "memory": 2.0**35}}
    gone = {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 24.0, "GPU": 1.0})
    monkeypatch.setattr(ray, "nodes", lambda: [head, gpu_node, gone])
    room = capacity(joined=False)
    assert (room.nodes, room.node_memory, room.cpus_per_gpu) == (((16.0, 0.0), (8.0, 1.0)), (2.0**34, 2.0**35), 8.0)
    assert plan_resources(parse_config({"train": {"use_gpu": True, "num_workers": 1}}), room).cpus_per_worker == 8.0


def test_report_on_a_missing_dir_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err


ASHA_80_STEPS = parse_config(
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


def test_asha_rungs_are_training_steps():
    """Rungs at grace_period evaluations x reduction_factor, in steps: the same amount of training for
    every trial it compares, also for a trial resumed mid-way (whose training_iteration restarts)."""
    from skray.commands.tune import asha

    scheduler = asha(ASHA_80_STEPS)
    assert scheduler._time_attr == "step"
    assert scheduler._max_t == 80
    assert sorted(m for m, _ in scheduler._brackets[0]._rungs) == [20, 40, 80]


def test_asha_judges_a_trial_against_its_own_kind_and_head():
    """A fresh linear head starts at chance: at the first rung it trails the verbalizer trials, which
    must not stop it; a weaker trial of its own head does not pass. Its family's rungs sit where
    everyone's do."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from skray.commands.tune import asha

    scheduler = asha(ASHA_80_STEPS)
    scheduler.set_search_properties("best_val_acc", "max")

    def trial(name: str, head: str) -> SimpleNamespace:
        t = SimpleNamespace(trial_id=name, config={"method": "sk_prefix", "head": head, "lr": 0.01})
        scheduler.on_trial_add(None, t)
        return t

    words = [trial(f"v{i}", "verbalizer") for i in range(3)]
    for t in words:
        assert scheduler.on_trial_result(None, t, {"step": 20, "best_val_acc": 0.8}) == TrialScheduler.CONTINUE
    linear, weaker = trial("linear", "linear"), trial("weaker", "linear")
    assert scheduler.on_trial_result(None, linear, {"step": 20, "best_val_acc": 0.5}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, weaker, {"step": 20, "best_val_acc": 0.4}) == TrialScheduler.STOP
    assert sorted(m for m, _ in scheduler._trial_info["linear"]._rungs) == [20, 40, 80]


def test_asha_decides_once_when_a_report_passes_rungs_it_has_no_record_at():
    """A killed driver's resume restores a scheduler that predates a trial's last rung records: the
    trial, back at step 40, is judged at rung 40 and not again at rung 20 on its next report (stock
    ASHA stopped it there, between rungs, by its value at step 60)."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from skray.commands.tune import asha

    scheduler = asha(ASHA_80_STEPS)
    scheduler.set_search_properties("best_val_acc", "max")
    strong = [SimpleNamespace(trial_id=f"s{i}") for i in range(3)]
    back = SimpleNamespace(trial_id="back")
    for t in [*strong, back]:
        scheduler.on_trial_add(None, t)
    for t in strong:
        assert scheduler.on_trial_result(None, t, {"step": 20, "best_val_acc": 0.9}) == TrialScheduler.CONTINUE
    # back: rung 40 has no record yet, so it continues; rung 20 (cutoff 0.9) is marked passed
    assert scheduler.on_trial_result(None, back, {"step": 40, "best_val_acc": 0.5}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, back, {"step": 60, "best_val_acc": 0.5}) == TrialScheduler.CONTINUE
    rungs = dict(scheduler._brackets[0]._rungs)
    assert rungs[40]["back"] == 0.5
    assert math.isnan(rungs[20]["back"])


def test_trial_reports_keep_what_came_before_a_resume_and_a_rerun_step_replaces_the_rest(tmp_path):
    """Tune restarts a resumed trial's result.json empty (skray's trials have no Tune checkpoint); skray
    appends in storage, so the curve keeps its start; a trial restarted from step 0 starts it again."""
    from types import SimpleNamespace

    from skray.search import TrialReports
    from skray.storage import read_reports

    class Trial:  # what the logger reads of Tune's Trial (hashable, like Tune's)
        config = {"lr": 0.1}
        local_path = str(tmp_path / "staging")
        storage = SimpleNamespace(trial_dir_name="run_trial_x")

        def init_local_path(self) -> None:
            Path(self.local_path).mkdir(exist_ok=True)

    trial, staging = Trial(), tmp_path / "staging"
    path = str(tmp_path / "run" / "run_trial_x" / "result.json")
    first = TrialReports(str(tmp_path / "run"))
    for step in (0, 10, 20):
        first.log_trial_result(step, trial, {"step": step})
    assert json.loads((staging / "params.json").read_text()) == {"lr": 0.1}
    resumed = TrialReports(str(tmp_path / "run"))  # a new driver: resumed from step 20's checkpoint
    resumed.log_trial_result(1, trial, {"step": 30})
    assert [r["step"] for r in read_reports(path)] == [0, 10, 20, 30]
    resumed.log_trial_result(1, trial, {"step": 0})  # restarted from scratch
    assert [r["step"] for r in read_reports(path)] == [0]


def test_an_ended_run_drops_only_the_trial_folders_a_killed_driver_started_and_never_reported(tmp_path):
    """A driver killed right after it started a trial leaves the trial's folder (an empty result.json,
    maybe Tune's params) that the resumed run never knew; once the run ended it is removed, and nothing
    else is: a trial with reports, one that failed before its first, a folder of checkpoints, the logs."""
    from skray.search import remove_unreported_trials

    run = tmp_path / "run"
    folders = {
        "run_trial_husk_3": {"params.json": "{}", "params.pkl": "", "result.json": ""},
        "run_trial_bare_4": {"result.json": ""},
        "run_trial_done_1": {"params.json": "{}", "result.json": '{"step": 0}\n'},
        "run_trial_failed_2": {"params.json": "{}", "result.json": "", "error.txt": "boom"},
        "train_m1a2b3001": {"result.json": "", "checkpoint_000000/x": "weights"},
        "logs": {"worker.err": ""},
    }
    for folder, files in folders.items():
        for name, text in files.items():
            (run / folder / name).parent.mkdir(parents=True, exist_ok=True)
            (run / folder / name).write_text(text)
    remove_unreported_trials(str(run))
    kept = ["logs", "run_trial_done_1", "run_trial_failed_2", "train_m1a2b3001"]
    assert sorted(p.name for p in run.iterdir()) == kept


def test_compare_without_a_compare_section_is_a_clear_error(tiny_experiment, tmp_path):
    with pytest.raises(ConfigError, match="compare: missing"):
        run_experiment(tiny_experiment(), "compare")


def test_every_command_sets_its_concurrency_without_a_search_section():
    from skray.commands import COMMANDS

    compare = parse_config({"max_concurrent_trials": 2, "compare": {"methods": ["sk_prefix", "lora"]}})
    assert compare.search is None
    assert plan_resources(compare, cluster((16, 0)), command=COMMANDS["compare"]).max_concurrent == 2
    with pytest.raises(ConfigError, match=r"search.max_concurrent_trials moved to the top level"):
        parse_config(
            {
                "search": {
                    "wordings": ["a"],
                    "prefix_length": {"low": 1, "high": 2},
                    "lr": {"low": 0.001, "high": 0.01},
                    "max_concurrent_trials": 2,
                }
            }
        )


def test_workers_that_cannot_fit_the_nodes_memory_are_refused_before_launch():
    """64 workers each loading SmolLM2 (134.5M params, fp32) on a 16 GiB node: one line with the numbers
    and the fixes, not 64 workers that each start loading the model and hang."""
    from skray.preflight import GIB, check_memory

    params, node = 134_515_008, [16.0 * GIB]
    cfg = parse_config({"train": {"num_workers": 64, "use_gpu": False, "precision": "fp32"}})
    with pytest.raises(ResourceError) as err:
        check_memory(cfg, params, 64, "train.num_workers", node, grows=False)
    line = str(err.value)
    assert "\n" not in line
    assert "train.num_workers=64 workers need at least 1.50 GiB each (0.50 GiB of backbone weights" in line
    assert "(10 such workers fit); lower train.num_workers to 10 or fewer" in line
    assert "train.zero_stage 3" in line
    # ZeRO 3 loads 1/64 of the weights per worker; the runtime alone then decides.
    zero3 = parse_config({"train": {"num_workers": 64, "use_gpu": False, "precision": "fp32", "zero_stage": 3}})
    with pytest.raises(ResourceError, match=r"need at least 1\.01 GiB each"):
        check_memory(zero3, params, 64, "train.num_workers", node, grows=False)
    # What fits: how many trials of 2 workers at once; an autoscaling cluster is not refused.
    two = parse_config({"train": {"num_workers": 2, "use_gpu": False, "precision": "fp32"}})
    assert check_memory(two, params, 2, "train.num_workers", node, grows=False) == 5  # 10 workers // 2
    assert check_memory(cfg, params, 64, "train.num_workers", node, grows=True) == 1


def test_a_backbone_larger_than_the_worker_budget_needs_zero3_and_enough_workers():
    """train.memory_per_worker_gb: 1.1B fp32 (4.1 GiB) in 5 GiB workers is refused on one worker
    (and whole-model stages), and fits two ZeRO-3 workers (each loads half)."""
    from skray.preflight import GIB, check_memory

    params, node = 1_100_048_384, [20.0 * GIB]
    base = {"use_gpu": False, "precision": "fp32", "memory_per_worker_gb": 5.0, "zero_stage": 3}
    one = parse_config({"train": base | {"num_workers": 1}})
    with pytest.raises(ResourceError, match=r"needs at least 5\.10 GiB .* train.memory_per_worker_gb is 5; raise"):
        check_memory(one, params, 1, "train.num_workers", node, grows=False)
    two = parse_config({"train": base | {"num_workers": 2}})
    assert check_memory(two, params, 2, "train.num_workers", node, grows=False) == 2  # 4 workers of 5 GiB fit
    whole = parse_config({"train": base | {"num_workers": 2, "zero_stage": 2}})
    with pytest.raises(ResourceError, match="set train.zero_stage 3 with more workers"):
        check_memory(whole, params, 2, "train.num_workers", node, grows=False)


def test_which_earlier_run_the_same_command_resumes_or_reuses(tiny_experiment, tmp_path):
    """A run cut while it prepared (no Tune state yet, e.g. during compare.tune's searches) is resumed;
    one whose trials started resumes until it finished; a finished run with no failed trial is what a
    resumed compare reuses of its searches; a run started with another config is neither."""
    from skray.search import finished_run, unfinished_run

    cfg = tiny_experiment()
    record = json.dumps({"command": "tune", "config": cfg.model_dump()})

    def run(stamp: str, *files: str, config: str = record) -> Path:
        d = tmp_path / f"tiny-tune-2026113{stamp}"
        d.mkdir()
        (d / "experiment.json").write_text(config)
        for name in files:
            (d / name).write_text("x")
        return d

    done = run("0-000000", "tuner.pkl", "finished")
    assert unfinished_run(str(tmp_path), cfg, "tune") is None
    assert finished_run(str(tmp_path), cfg, "tune") == str(done)
    preparing = run("0-000001")  # cut before Tune wrote its state
    assert unfinished_run(str(tmp_path), cfg, "tune") == str(preparing)
    running = run("0-000002", "tuner.pkl")
    assert unfinished_run(str(tmp_path), cfg, "tune") == str(running)
    assert finished_run(str(tmp_path), cfg, "tune") == str(done)  # the newest finished one
    failed = run("0-000003", "tuner.pkl", "finished")
    (failed / "trial_a").mkdir()
    (failed / "trial_a" / "error.txt").write_text("boom")
    assert unfinished_run(str(tmp_path), cfg, "tune") is None
    assert unfinished_run(str(tmp_path), cfg, "tune", retry_errored=True) == str(failed)
    assert finished_run(str(tmp_path), cfg, "tune") == str(done)  # a run with a failed trial is not reused
    other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 0.5})})
    run("0-000004", config=json.dumps({"command": "tune", "config": other.model_dump()}))
    assert unfinished_run(str(tmp_path), cfg, "tune") is None  # the newest was started with another config
    assert finished_run(str(tmp_path), other, "tune") is None
    older = cfg.model_dump()  # as an older skray wrote it: a setting added since at its default is missing
    del older["train"]["select_by"]
    upgraded = run("0-000005", config=json.dumps({"command": "tune", "config": older}))
    assert unfinished_run(str(tmp_path), cfg, "tune") == str(upgraded)
    renamed = cfg.model_dump()
    renamed["train"]["selection"] = renamed["train"].pop("select_by")  # a setting skray no longer knows
    run("0-000006", config=json.dumps({"command": "tune", "config": renamed}))
    assert unfinished_run(str(tmp_path), cfg, "tune") is None


def _finished_search(root: Path, cfg, lr: float, m: int) -> Path:
    """A finished `skray tune` run on disk as skray writes it: its config, one completed trial, the marker."""
    run = root / f"{cfg.name}-tune-20261130-000000"
    trial = run / "run_trial_abc12345_1_lr=x"
    trial.mkdir(parents=True)
    (run / "experiment.json").write_text(json.dumps({"command": "tune", "config": cfg.model_dump()}))
    (run / "finished").write_text("2026-11-30T00:00:00")
    params = {"method": cfg.method.kind, "wording": cfg.method.wording, "prefix_length": m, "lr": lr}
    (trial / "params.json").write_text(json.dumps(params))
    report = {"trial_id": "abc12345", "step": 4, "val_acc": 0.7, "best_val_acc": 0.7, "test_acc": 0.6, "done": True}
    (trial / "result.json").write_text(json.dumps(report) + "\n")
    return run


def test_a_resumed_tuned_compare_reuses_a_finished_search_and_stops_on_an_interrupted_one(
    tiny_experiment, tmp_path, monkeypatch
):
    """compare.tune runs one `skray tune` per method inside RUN_DIR/tuning: one that finished (same config)
    is read back, not run again; one that Ctrl-C cut makes compare stop (exit 130), not go on with it."""
    import skray.run
    from skray.commands.compare import method_search, tuned_entry
    from skray.errors import Interrupted

    compare = {"methods": ["sk_prefix"], "seeds": [0], "tune": {"trials": 1, "lr": {"low": 1e-3, "high": 1e-2}}}
    cfg = parse_config({**tiny_experiment().model_dump(), "compare": compare})
    run_dir = str(tmp_path / "tiny-compare-20261130-000000")
    search = method_search(cfg, "sk_prefix", "sk_prefix", run_dir)
    monkeypatch.setattr(skray.run, "run_experiment", lambda *a, **k: pytest.fail("a finished search ran again"))
    done = _finished_search(Path(run_dir) / "tuning", search, lr=0.005, m=cfg.method.prefix_length)
    assert tuned_entry(cfg, "sk_prefix", "sk_prefix", run_dir, skray.run.search_or_reuse) == (
        {"kind": "sk_prefix", "lr": 0.005},
        str(done / "run_trial_abc12345_1_lr=x"),  # the best trial, which becomes the first seed's row
    )

    (Path(run_dir) / "tuning" / "tiny-sk_prefix-tune-20261130-000000" / "finished").unlink()  # as after Ctrl-C
    cut = (str(Path(run_dir) / "tuning" / "tiny-sk_prefix-tune-20261130-000000"), pd.DataFrame())
    monkeypatch.setattr(skray.run, "run_experiment", lambda *a, **k: cut)  # Tune returned early
    with pytest.raises(Interrupted, match="run the same command again"):
        tuned_entry(cfg, "sk_prefix", "sk_prefix", run_dir, skray.run.search_or_reuse)


def test_a_run_has_ended_only_when_every_trial_made_its_last_report_or_failed():
    """Ctrl-C leaves Tune's running trials TERMINATED, as if they had ended; the reports say otherwise."""
    from ray.tune import Result

    from skray.search import ran_to_end

    def result(metrics: dict, error: Exception | None = None) -> Result:
        return Result(metrics=metrics, checkpoint=None, error=error, path="/nowhere")

    final = result({"step": 96, "test_acc": 0.7, "done": True})
    stopped = result({"step": 48, "done": True})  # ASHA's stop: Tune marks that report done
    failed = result({}, error=RuntimeError("worker died"))
    cut = result({"step": 24, "val_acc": 0.5})  # the trial running when Ctrl-C came
    assert ran_to_end([final, stopped, failed], 3)
    assert not ran_to_end([final, cut], 2)
    assert not ran_to_end([final, stopped], 3)  # a planned trial never started


def test_only_a_live_group_of_this_job_made_by_a_dead_actor_is_an_orphan():
    """The reaper's rule, on the GCS's own records: Ray Train's controller made its leaked group after
    its death was recorded, so the record's creator_actor_dead stayed false and only the actor table
    says the creator is gone."""
    import ray
    from ray.core.generated import gcs_pb2

    job, actor = "01000000", ray.ActorID.from_random()
    dead, alive = {actor.hex(): "DEAD"}.get, {actor.hex(): "ALIVE"}.get

    def group(**fields) -> gcs_pb2.PlacementGroupTableData:
        record = {"creator_job_id": bytes.fromhex(job), "creator_actor_id": actor.binary(), "state": 1} | fields
        return gcs_pb2.PlacementGroupTableData(**record)

    assert orphaned(group(), job, dead)  # made after its creator's death: only the actor table knows
    assert orphaned(group(creator_actor_dead=True), job, alive)  # the record says so itself
    assert orphaned(group(), job, lambda actor: None)  # an actor the table no longer holds
    assert not orphaned(group(), job, alive)
    assert not orphaned(group(), "02000000", dead)  # another job's
    assert not orphaned(group(is_detached=True), job, dead)
    assert not orphaned(group(state=gcs_pb2.PlacementGroupTableData.REMOVED), job, dead)
    driver = ray.ActorID.nil().binary()
    assert not orphaned(group(creator_actor_id=driver, creator_actor_dead=True), job, dead)  # Tune's trial groups
