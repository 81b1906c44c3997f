"""Configuration errors: one line naming the key and the problem, exit code 2, no traceback."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import BaseModel

from skray.cli import main
from skray.config import (
    CompareConfig,
    ExperimentConfig,
    IntRange,
    LogRange,
    ScaleConfig,
    SearchConfig,
    TrainConfig,
    load_config,
    parse_config,
    resolve_device,
)
from skray.errors import ConfigError

QUICKSTART = Path(__file__).parents[1] / "experiments" / "quickstart.yaml"


def test_quickstart_parses_with_overrides():
    cfg = load_config(QUICKSTART, ["train.lr=2e-4", "method.kind=sk_prompt", "train.zero_stage=3"])
    assert cfg.train.lr == 2e-4
    assert cfg.method.kind == "sk_prompt"
    assert cfg.train.zero_stage == 3
    assert len(cfg.search.wordings) >= 4


@pytest.mark.parametrize(
    ("override", "key", "words"),
    [
        ("train.lerning_rate=1", "train.lerning_rate", "unknown key; train takes: num_workers, cpus_per_worker"),
        ("train.max_step=1", "train.max_step", "did you mean train.max_steps?"),
        ("train.lr=-0.1", "train.lr", "greater than 0"),
        ("train.zero_stage=5", "train.zero_stage", "less than or equal to 3"),
        ("train.max_steps=many", "train.max_steps", "valid integer"),
        ("search.wordings=[]", "search.wordings", "at least 1"),
        ("method.prefix_length=0", "method.prefix_length", "greater than or equal to 1"),
        ("search.prefix_length.low=0", "search.prefix_length.low", "greater than or equal to 1"),
        ("search.prefix_length.high=5000", "search", "at most 1024, as method.prefix_length"),
        ("train.offload=all", "train", "zero_stage 3"),
        ("train.offload=params", "train", "'params' (parameters) needs train.zero_stage 3"),
        ("train.offload_device=nvme", "train", "needs train.offload optimizer, params or all"),
        ("train.use_gpu=maybe", "train.use_gpu", "'auto'"),
        ("scale.zero_stages=[4]", "scale.zero_stages.0", "less than or equal to 3"),
    ],
)
def test_bad_values_give_one_line_and_exit_2(capsys, override, key, words):
    code = main(["train", str(QUICKSTART), "--set", override])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"skray: error: {key}"), err
    assert words in err, err


def test_missing_file_and_bad_yaml(tmp_path, capsys):
    assert main(["tune", str(tmp_path / "nope.yaml")]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    assert main(["tune", str(bad)]) == 2
    errs = capsys.readouterr().err.strip().splitlines()
    assert "no such config file" in errs[0]
    assert "not valid YAML" in errs[1]


def test_tune_needs_search_section(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\n")
    assert main(["tune", str(cfg)]) == 2
    assert "search: missing" in capsys.readouterr().err


def test_auto_settings_parse_and_resolve():
    cfg = load_config(QUICKSTART, ["train.zero_stage=auto", "train.use_gpu=auto", "train.precision=auto"])
    assert cfg.train.zero_stage == "auto"
    assert (resolve_device(cfg.train, 0, 2).use_gpu, resolve_device(cfg.train, 0, 2).precision) == (False, "fp32")
    # On GPUs the workers settle it by their compute capability (the driver may see no GPU).
    assert (resolve_device(cfg.train, 2, 2).use_gpu, resolve_device(cfg.train, 2, 2).precision) == (True, "auto")
    # One GPU cannot hold two workers: auto trains on CPUs rather than failing to place them.
    assert (resolve_device(cfg.train, 1, 2).use_gpu, resolve_device(cfg.train, 1, 2).precision) == (False, "fp32")
    pinned = load_config(QUICKSTART, ["train.use_gpu=false", "train.precision=fp16"]).train
    assert (resolve_device(pinned, 8, 2).use_gpu, resolve_device(pinned, 8, 2).precision) == (False, "fp16")
    with pytest.raises(ConfigError, match="chosen by zero_stage auto"):
        load_config(QUICKSTART, ["train.zero_stage=auto", "train.offload=optimizer"])


def test_nvme_offload_is_refused_on_cpu_workers_before_launch():
    nvme = ["train.zero_stage=3", "train.offload=params", "train.offload_device=nvme"]
    with pytest.raises(ConfigError, match="needs train.nvme_path"):
        load_config(QUICKSTART, nvme)
    with pytest.raises(ConfigError, match="GPU workers only"):
        load_config(QUICKSTART, [*nvme, "train.nvme_path=/local_nvme", "train.use_gpu=false"])
    auto = load_config(QUICKSTART, [*nvme, "train.nvme_path=/local_nvme", "train.use_gpu=auto"]).train
    assert resolve_device(auto, 2, 2).use_gpu is True
    with pytest.raises(ConfigError, match="GPU workers only .* found no GPU for every worker"):
        resolve_device(auto, 0, 2)


def test_nvme_offload_needs_zero_3(capsys):
    """DeepSpeed's ZeRO 1 and 2 optimizer offloads to CPU memory whatever the device (no NVMe path):
    stage 1 or 2 with nvme would quietly fill the RAM nvme was chosen to spare, so it is refused."""
    nvme = ["train.offload=optimizer", "train.offload_device=nvme", "train.nvme_path=/local_nvme"]
    for stage in (1, 2):
        with pytest.raises(ConfigError, match=r"nvme needs train.zero_stage 3 \(or auto\)"):
            load_config(QUICKSTART, [*nvme, f"train.zero_stage={stage}"])
    assert load_config(QUICKSTART, [*nvme, "train.zero_stage=3"]).train.offload_device == "nvme"
    auto = ["train.zero_stage=auto", "train.offload_device=nvme", "train.nvme_path=/local_nvme"]
    assert load_config(QUICKSTART, auto).train.zero_stage == "auto"  # auto offloads to nvme at stage 3 only
    sets = [part for override in [*nvme, "train.zero_stage=2"] for part in ("--set", override)]
    assert main(["train", str(QUICKSTART), *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("skray: error: train: train.offload_device nvme needs train.zero_stage 3"), err


def test_param_offload_is_in_deepspeeds_config():
    from skray.train.deepspeed import deepspeed_config

    zero = lambda *sets: deepspeed_config(load_config(QUICKSTART, list(sets)).train, 10)["zero_optimization"]  # noqa: E731
    params = zero("train.zero_stage=3", "train.offload=params")
    assert params["offload_param"] == {"device": "cpu"}
    assert "offload_optimizer" not in params
    nvme = zero("train.zero_stage=3", "train.offload=all", "train.offload_device=nvme", "train.nvme_path=/nvme")
    assert nvme["offload_param"] == nvme["offload_optimizer"] == {"device": "nvme", "nvme_path": "/nvme"}


def test_mlflow_tracking_without_mlflow_is_one_line_before_launch(capsys):
    if importlib.util.find_spec("mlflow") is not None:
        pytest.skip("mlflow is installed here")
    code = main(["train", str(QUICKSTART), "--set", "tracking.mlflow.tracking_uri=file:///tmp/mlruns"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        "skray: error: tracking.mlflow needs the mlflow package on the driver: pip install mlflow "
        "(or remove tracking.mlflow)"
    ]


def test_console_script_exit_code_and_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "skray.cli", "train", str(QUICKSTART), "--set", "train.zero_stage=5"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        == "skray: error: train.zero_stage: Input should be less than or equal to 3; or Input should be 'auto' (got 5)"
    )


def test_set_keeps_templates_as_strings_and_parses_mappings():
    cfg = load_config(QUICKSTART, ["data.template={text}", "method.label_words={fresh: ' yes', rotten: ' no'}"])
    assert cfg.data.template == "{text}"
    assert cfg.method.label_words == {"fresh": " yes", "rotten": " no"}


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("method.wording=Answer: positive or negative", "wording", "Answer: positive or negative"),
        ("method.wording=yes", "wording", "yes"),  # not True
        ("data.template=Review: {text}\nSentiment:", "template", "Review: {text}\nSentiment:"),
        ("name=2024", "name", "2024"),
    ],
)
def test_set_takes_text_keys_as_written(override, key, value):
    cfg = load_config(QUICKSTART, [override])
    got = {"wording": cfg.method.wording, "template": cfg.data.template, "name": cfg.name}[key]
    assert got == value


def test_lr_warmup_and_untimed_steps_are_separate_keys():
    cfg = load_config(QUICKSTART, ["train.lr_warmup_steps=5", "train.untimed_steps=1"])
    assert (cfg.train.warmup, cfg.train.untimed_steps) == (5, 1)
    assert load_config(QUICKSTART, ["train.max_steps=48"]).train.warmup == 4  # default: a tenth of the run
    with pytest.raises(ConfigError, match="lr_warmup_steps .* untimed_steps"):
        load_config(QUICKSTART, ["train.warmup_steps=2"])  # the old key meant either; say which is which
    with pytest.raises(ConfigError, match="must not exceed train.max_steps"):
        load_config(QUICKSTART, ["train.lr_warmup_steps=100", "train.max_steps=10"])


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (
            {"kind": "lora", "lora_target_modules": ["q_prj"]},
            "method.lora_target_modules ['q_prj']: no module of the backbone is named so; its linear layers "
            "end in: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj",
        ),
        (
            {"kind": "sk_prompt", "label_words": {"fresh": " good"}},
            "method.label_words: no word for label 'rotten' (labels: ['rotten', 'fresh'])",
        ),
    ],
)
def test_a_bad_compare_entry_is_one_line_before_any_worker_starts(tiny_experiment, tmp_path, capsys, entry, words):
    raw = {**tiny_experiment().model_dump(), "compare": {"methods": ["sk_prefix", entry], "seeds": [0]}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["compare", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"skray: error: compare.methods entry {entry!r}: {words}"
    assert not any(p.is_dir() for p in tmp_path.iterdir())  # no run dir: nothing started


def test_unwritable_storage_path_is_one_line_before_anything_starts(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["train", str(QUICKSTART), "--set", f"storage_path={blocker}/runs"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"skray: error: storage_path '{blocker}/runs': cannot write there")
    assert "writable folder" in err


@pytest.mark.parametrize(
    ("methods", "label"),
    [
        (["lora", {"kind": "lora"}], "lora(lr=0.003)"),  # the same method at the same (default) lr
        ([{"kind": "sk_prefix", "lr": 1e-3}, {"kind": "sk_prefix", "lr": 0.001}], "sk_prefix(lr=0.001)"),
    ],
)
def test_compare_entries_that_run_the_same_thing_are_refused(methods, label):
    with pytest.raises(ConfigError, match=rf"two entries both run '{re.escape(label)}'"):
        load_config(QUICKSTART, [f"compare={{methods: {json.dumps(methods)}}}"])


def test_compare_labels_say_what_differs():
    from skray.commands.compare import variants

    cfg = load_config(
        QUICKSTART,
        [
            "compare={methods: [{kind: lora, lr: 0.002}, {kind: lora, lr: 0.0005}, lora, sk_prefix, "
            "{kind: sk_prefix, head: linear}]}"
        ],
    )
    assert list(variants(cfg)) == [
        "lora(lr=0.002)",
        "lora(lr=0.0005)",
        "lora(lr=0.003)",
        "sk_prefix",
        "sk_prefix(head=linear)",
    ]
    assert [lr for _, lr in variants(cfg).values()][:3] == [0.002, 0.0005, 0.003]


def test_every_compare_trial_config_is_valid_where_the_worker_reads_it():
    """An entry at its own lr beside a plain one: the trial of the entry runs with train.lr set to that
    lr, and the worker must not then see two entries both running it (tweets_diagnosis.yaml failed so)."""
    from skray.commands.compare import variants
    from skray.search import trial_experiment

    cfg = load_config(QUICKSTART, ["train.lr=0.004", "compare={methods: [sk_prefix, {kind: sk_prefix, lr: 0.001}]}"])
    for label in variants(cfg):
        trial = trial_experiment("compare", cfg.model_dump(), {"method": label, "seed": 0})
        again = ExperimentConfig.model_validate(trial.model_dump())  # what the worker does
        assert again.method.kind == "sk_prefix"
        assert again.train.lr == (0.001 if "lr=0.001" in label else 0.004)


def test_compare_tune_lr_ranges_per_kind_per_entry_or_one_for_all(tmp_path):
    import pandas as pd

    from skray.commands.compare import lr_range, method_search, searched_ranges

    own = "{kind: lora, lr: {low: 1.0e-4, high: 1.0e-3}}"
    tuned = f"compare={{methods: [full_finetune, prompt_tuning, {own}], tune: {{trials: 3}}}}"
    cfg = load_config(QUICKSTART, [tuned])
    ranges = [(r.low, r.high) for r in (lr_range(cfg, e) for e in cfg.compare.methods)]
    assert ranges == [(5e-6, 5e-5), (1e-2, 1e-1), (1e-4, 1e-3)]  # the kind's own, the kind's own, the entry's
    prepared = cfg.model_copy(
        update={
            "compare": cfg.compare.model_copy(
                update={
                    "tune": None,
                    "methods": [
                        {"kind": "full_finetune", "lr": 1e-5},
                        {"kind": "prompt_tuning", "lr": 0.05, "prefix_length": 9},
                        {"kind": "lora", "lr": 3e-4},
                    ],
                }
            )
        }
    )
    (tmp_path / "prepared.json").write_text(prepared.model_dump_json())  # what the searches chose
    table = pd.DataFrame(
        {
            "method": ["full_finetune", "prompt_tuning(prefix_length=9)", "lora", "other"],
            "lr": [1e-5, 0.05, 9.5e-4, 1.0],
        }
    )
    assert searched_ranges(table, cfg.model_dump(), str(tmp_path)) == [
        "5e-06-5e-05",
        "0.01-0.1",
        "0.0001-0.001, chosen at the top",  # 9.5e-4 sits in the top tenth of the log range: it may have capped lora
        None,
    ]
    for every, grace in ((24, 2), (48, 1)):  # ASHA's one rung at half of the 96 steps
        steps = load_config(QUICKSTART, [tuned, "train.max_steps=96", f"train.eval_every={every}"])
        assert method_search(steps, "lora", "lora", "runs/x").search.grace_period == grace
    one = load_config(QUICKSTART, [tuned, "compare.tune.lr={low: 1.0e-5, high: 1.0e-1}"])
    assert [(r.low, r.high) for r in (lr_range(one, e) for e in one.compare.methods)][:2] == [(1e-5, 1e-1)] * 2
    for methods, tune, words in [
        ("[{kind: lora, lr: 0.002}]", ", tune: {trials: 3}", "compare.tune searches each method's lr; give the range"),
        (
            "[{kind: lora, lr: {low: 0.01, high: 0.001}}]",
            ", tune: {trials: 3}",
            "lr must be a range {low, high}, 0 < low",
        ),
        (
            "[{kind: lora, lr: {low: 0.001, high: 0.01}}]",
            "",
            "lr must be a number in (0, 1] (a range needs compare.tune)",
        ),
    ]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            load_config(QUICKSTART, [f"compare={{methods: {methods}{tune}}}"])


def _section_models(model: type[BaseModel], seen: list[type[BaseModel]]) -> list[type[BaseModel]]:
    """``model`` and every section model its fields hold (through ``X | None``, lists and the like)."""
    if model not in seen:
        seen.append(model)
        for field in model.model_fields.values():
            for arg in _type_args(field.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    _section_models(arg, seen)
    return seen


def _type_args(annotation: object) -> list[object]:
    return [annotation, *(a for arg in get_args(annotation) for a in _type_args(arg))]


def test_every_config_key_is_described():
    """The README sends users to skray/config/ for every key: each says what it means."""
    models = _section_models(ExperimentConfig, [])
    assert {IntRange, LogRange, SearchConfig, CompareConfig, ScaleConfig, TrainConfig} <= set(models)
    missing = [
        f"{model.__name__}.{name}"
        for model in models
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert not missing, f"config keys without a description: {missing}"


@pytest.mark.parametrize("path", sorted((QUICKSTART.parent).glob("*.yaml")), ids=lambda p: p.name)
def test_every_experiment_file_is_a_valid_config(path):
    cfg = load_config(path)
    if cfg.compare:  # every compare entry makes a valid method, with distinct labels
        from skray.commands.compare import variants

        assert len(variants(cfg)) == len(cfg.compare.methods)


def test_local_paths_become_absolute_so_ray_workers_find_them(tmp_path, monkeypatch):
    """Ray's workers run in another folder: `data.name: data/x` read relative there was tried as a hub id."""
    (tmp_path / "data" / "x").mkdir(parents=True)
    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = parse_config({"data": {"name": "data/x"}, "backbone": {"name": "model"}})
    assert (cfg.data.name, cfg.backbone.name) == (str(tmp_path / "data" / "x"), str(tmp_path / "model"))
    kept = parse_config({"data": {"name": "someone/a_hub_set"}, "backbone": {"name": "org/a-hub-model"}})
    assert (kept.data.name, kept.backbone.name) == ("someone/a_hub_set", "org/a-hub-model")
    (tmp_path / "rotten_tomatoes_critics").mkdir()  # an embedded name wins over a folder of that name
    assert parse_config({}).data.name == "rotten_tomatoes_critics"
