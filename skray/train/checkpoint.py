"""Checkpoints hold only what trained: the best weights (safetensors) plus JSON saying how to
rebuild the model, and DeepSpeed's resume state (trainable weights, optimizer, schedule).
``load_trained`` imports the model's modules when called: a worker imports this module before its
DeepSpeed accelerator is named (see ``skray.train.recipe``)."""

from __future__ import annotations

import json
import posixpath
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:  # deepspeed itself is imported only after DS_ACCELERATOR is set
    from deepspeed import DeepSpeedEngine
    from ray.train import Checkpoint

    from skray.config import ExperimentConfig
    from skray.methods.base import TaskModel

WEIGHTS = "adapter.safetensors"
META = "skray.json"
RESUME = "deepspeed"  # DeepSpeed's own layout: one file per rank for optimizer partitions
RUN_STATE = "run_state.json"  # the RunState again, readable before an engine exists
TAG = "state"
# Marks a report a restored trial sends again from its RunState (skray.train.recipe); dropped where logged.
REPLAYED = "replayed"


def save_checkpoint(directory: str | Path, state: dict[str, torch.Tensor], meta: dict) -> int:
    """Write weights and metadata; returns the weights' size in bytes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, directory / WEIGHTS)
    (directory / META).write_text(json.dumps(meta, indent=2))
    return (directory / WEIGHTS).stat().st_size


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    directory = Path(directory)
    return load_file(directory / WEIGHTS), json.loads((directory / META).read_text())


def load_trained(directory: str | Path, device: torch.device | str = "cpu") -> tuple[TaskModel, dict[str, Any]]:
    """Rebuild a trained model from a checkpoint on ``device``: the frozen backbone by name, plus what
    trained. The backbone loads in the run's precision (meta ``precision``; fp32 in checkpoints from
    before it was recorded) and the model is built and placed as the recipe does, so a bf16 run's model
    takes half the memory of an fp32 one and reads the prompt cache its evaluations read."""
    from skray.backbones import load_backbone
    from skray.config import BackboneConfig, MethodConfig
    from skray.devices import place
    from skray.methods import build_model
    from skray.partitioned import dtype_of

    state, meta = load_checkpoint(directory)
    dtype = dtype_of(meta.get("precision", "fp32"))
    backbone = load_backbone(
        BackboneConfig(name=meta["backbone"], trust_remote_code=meta.get("trust_remote_code", False)), dtype
    )
    token_level = meta.get("task") == "token_classification"
    model = build_model(backbone, MethodConfig(**meta["method"]), meta["label_names"], token_level)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != trainable:
        raise ValueError(
            f"{directory}: checkpoint does not match {meta['method']['kind']} "
            f"(differs in {sorted(set(state) ^ trainable)[:3]})"
        )
    place(model, torch.device(device), dtype, frozen=backbone.model)
    model.load_state_dict(state, strict=False)  # the fp32 masters, cast to the parameters' dtype
    return model.eval(), meta


@dataclass
class RunState:
    """What a resumed run restores besides DeepSpeed's own state (weights, optimizer, schedule):
    where it was, what was best so far, and the counters its reports are computed from."""

    step: int = 0
    best_score: float = -1.0
    best_step: int = 0
    best_val: dict[str, float] = field(default_factory=dict)
    zero_shot: dict[str, float] = field(default_factory=dict)
    zero_shot_test: dict[str, float] = field(default_factory=dict)  # the step-0 model on the test rows
    checkpoint_bytes: int = 0
    train_s: float = 0.0
    train_tokens: int = 0
    steady_s: float = 0.0
    steady_steps: int = 0
    steady_tokens: int = 0
    eval_s: float = 0.0
    time_to_first_step_s: float | None = None
    resumed_from: int = 0
    # Every report made so far (its metrics, JSON-able, without checkpoint_bytes): a restored run sends
    # them again, as the driver may have died before logging the last ones (SKTuningRecipe._replay).
    reports: list[dict] = field(default_factory=list)
    # What the run settled before building its engine (zero_stage/precision auto); None in older checkpoints.
    zero_stage: int | None = None
    offload: str | None = None
    precision: str | None = None


def checkpoint_meta(cfg: ExperimentConfig, label_names: list[str], precision: str, state: RunState, key: str) -> dict:
    """``skray.json``: how to rebuild the model a checkpoint's weights belong to, and which evaluation
    they scored best at (``key``: the selection metric)."""
    return {
        "backbone": cfg.backbone.name,
        "trust_remote_code": cfg.backbone.trust_remote_code,
        "method": cfg.method.model_dump(),
        "task": cfg.data.task,
        "label_names": label_names,
        "template": cfg.data.template,
        "max_length": cfg.data.max_length,
        "precision": precision,
        "step": state.best_step,
        f"val_{key}": state.best_score,
    }


def report_of(
    state: RunState, step: int, val: dict[str, float], train_loss: float, tokens: float, per_step: int
) -> dict:
    """What every report says of a run's state, in the table's vocabulary (``skray.results.COLUMNS``):
    the step, its validation scores, the best so far, the step-0 scores, and the training pace
    (``train_loss``: the mean since the last report; ``tokens``: read so far, over all ranks;
    ``per_step``: rows per optimizer step, over all ranks)."""
    seconds = state.train_s
    return {
        "step": step,
        **{f"val_{k}": v for k, v in val.items()},
        "train_loss": train_loss if step else float("nan"),
        **{f"best_val_{k}": v for k, v in state.best_val.items() if k != "loss"},
        "best_step": state.best_step,
        **{f"zero_shot_{k}": v for k, v in state.zero_shot.items() if k != "loss"},
        **{f"zero_shot_test_{k}": v for k, v in state.zero_shot_test.items() if k != "loss"},
        "train_s": seconds,
        "samples_per_s": step * per_step / seconds if seconds else 0.0,
        "tokens_per_s": tokens / seconds if seconds else 0.0,
        "time_to_first_step_s": state.time_to_first_step_s,
        "resumed_from": state.resumed_from,
        "eval_s": state.eval_s,
    }


def write_resume_state(
    engine: DeepSpeedEngine, directory: str | Path, state: RunState, best: dict[str, torch.Tensor] | None, meta: dict
) -> int:
    """Every rank: DeepSpeed's state without frozen weights (a collective), the run state inside it.
    The rank given the best weights also writes them as safetensors + meta, and the run state as JSON
    (``read_run_state``); returns the weights' bytes (0 otherwise)."""
    engine.save_checkpoint(
        str(Path(directory) / RESUME), tag=TAG, client_state={"skray": asdict(state)}, exclude_frozen_parameters=True
    )
    if best is None:
        return 0
    (Path(directory) / RUN_STATE).write_text(json.dumps(asdict(state)))
    return save_checkpoint(directory, best, meta)


def read_run_state(checkpoint: Checkpoint) -> RunState | None:
    """The run state alone, before any engine exists (a restart builds the engine its checkpoint was
    written with), read from the checkpoint's storage without fetching the rest; None in a checkpoint
    written before it was kept there."""
    from pyarrow.fs import FileType

    path = posixpath.join(checkpoint.path, RUN_STATE)
    if checkpoint.filesystem.get_file_info(path).type == FileType.NotFound:
        return None
    with checkpoint.filesystem.open_input_stream(path) as f:
        return RunState(**json.loads(f.read()))


def read_resume_state(engine: DeepSpeedEngine, directory: str | Path) -> tuple[RunState, dict[str, torch.Tensor]]:
    """Restore DeepSpeed's state in place; return the run state and the best weights so far."""
    _, client = engine.load_checkpoint(str(Path(directory) / RESUME), tag=TAG, load_module_strict=False)
    best, _ = load_checkpoint(directory)
    return RunState(**client["skray"]), best


def weights_bytes(checkpoint: Checkpoint) -> int:
    """The size of a checkpoint's best weights, read from its storage: what its report's
    ``checkpoint_bytes`` said (the same in every checkpoint of a run: names and shapes never change)."""
    return checkpoint.filesystem.get_file_info(posixpath.join(checkpoint.path, WEIGHTS)).size
