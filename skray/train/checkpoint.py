"""Checkpoints hold only what trained: the best weights (safetensors) plus JSON saying how to
rebuild the model, and DeepSpeed's resume state (trainable weights, optimizer, schedule)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:  # deepspeed itself is imported only after DS_ACCELERATOR is set
    from deepspeed import DeepSpeedEngine

    from skray.methods.base import TaskModel

WEIGHTS = "adapter.safetensors"
META = "skray.json"
RESUME = "deepspeed"  # DeepSpeed's own layout: one file per rank for optimizer partitions
TAG = "state"


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


def load_trained(directory: str | Path) -> tuple[TaskModel, dict[str, Any]]:
    """Rebuild a trained model from a checkpoint: the frozen backbone by name, plus what trained."""
    from skray.backbones import load_backbone
    from skray.config import BackboneConfig, MethodConfig
    from skray.methods import build_model

    state, meta = load_checkpoint(directory)
    backbone = load_backbone(
        BackboneConfig(name=meta["backbone"], trust_remote_code=meta.get("trust_remote_code", False))
    )
    token_level = meta.get("task") == "token_classification"
    model = build_model(backbone, MethodConfig(**meta["method"]), meta["label_names"], token_level)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != trainable:
        raise ValueError(
            f"{directory}: checkpoint does not match {meta['method']['kind']} "
            f"(differs in {sorted(set(state) ^ trainable)[:3]})"
        )
    model.load_state_dict(state, strict=False)
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


def write_resume_state(
    engine: DeepSpeedEngine, directory: str | Path, state: RunState, best: dict[str, torch.Tensor] | None, meta: dict
) -> int:
    """Every rank: DeepSpeed's state without frozen weights (a collective), the run state inside it.
    The rank given the best weights also writes them as safetensors + meta; returns their bytes (0 otherwise)."""
    engine.save_checkpoint(
        str(Path(directory) / RESUME), tag=TAG, client_state={"skray": asdict(state)}, exclude_frozen_parameters=True
    )
    return save_checkpoint(directory, best, meta) if best is not None else 0


def read_resume_state(engine: DeepSpeedEngine, directory: str | Path) -> tuple[RunState, dict[str, torch.Tensor]]:
    """Restore DeepSpeed's state in place; return the run state and the best weights so far."""
    _, client = engine.load_checkpoint(str(Path(directory) / RESUME), tag=TAG, load_module_strict=False)
    best, _ = load_checkpoint(directory)
    return RunState(**client["skray"]), best
