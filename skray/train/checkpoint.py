"""Checkpoints hold only what trained (safetensors) plus JSON saying how to rebuild the model."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "adapter.safetensors"
META = "skray.json"


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
