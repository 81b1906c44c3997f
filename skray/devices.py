"""Where a model computes, and putting a built model on a worker's device in the run's precision.

Two rules the GPU path depends on, kept in one place so the recipe and the GPU benchmarks agree:
- tensors a method makes before training (the prompt's token ids) go where the backbone computes,
  which for a ZeRO-3 model is the accelerator DeepSpeed gathers each module onto, not the CPU;
- the run's precision is for parameters only. Buffers keep their dtype: a Llama's rotary
  ``inv_freq`` is fp32 on purpose (DeepSpeed's bf16 engine keeps it so too), and a cached prompt
  computed with the fp32 frequencies must meet inputs rotated with the same ones.
"""

from __future__ import annotations

import torch
from torch import nn


def compute_device(model: nn.Module) -> torch.device:
    """The device ``model``'s forward runs on: its weights' device, or for a ZeRO-3 partitioned model
    the accelerator's current device (its partitions may live in CPU RAM with parameters offloaded;
    gathered weights always land on the accelerator)."""
    weight = next(model.parameters())
    if hasattr(weight, "ds_id"):
        from deepspeed.accelerator import get_accelerator

        return torch.device(get_accelerator().current_device_name())
    return weight.device


def place(model: nn.Module, device: torch.device, dtype: torch.dtype, frozen: nn.Module) -> nn.Module:
    """``model`` on ``device`` with its own floating-point parameters and buffers (a cached prompt) in
    ``dtype``. The ``frozen`` backbone keeps the dtypes it was loaded with: its weights are in the run's
    precision already, and a packed slot's backbone is shared by every member placed on it; its buffers
    keep the dtype its authors gave them (``model.to(device, dtype)`` would cast the rotary
    frequencies too). Parameters that ZeRO 3 partitioned at load time are left to DeepSpeed."""
    model.to(device)
    kept = {id(b) for b in frozen.buffers()} | {id(p) for p in frozen.parameters()}
    with torch.no_grad():
        for p in model.parameters():
            if id(p) not in kept and not hasattr(p, "ds_id") and p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
        for module in model.modules():
            for name, buffer in module.named_buffers(recurse=False):
                if id(buffer) not in kept and buffer.is_floating_point():
                    setattr(module, name, buffer.to(dtype))
    return model
