"""The GPU path's device placement checked on a CPU-only machine.

The ``meta`` device stands in for the GPU: moving a model there is as cheap as the real move is
expensive, and every op still runs (on shapes). torch itself lets a meta tensor meet a CPU one, so
``SameDevice`` raises where CUDA would ("Expected all tensors to be on the same device"): any op
whose tensors sit on two devices, except what CUDA allows (a 0-dim CPU tensor as a scalar, CPU
index tensors, copies between devices). Reading a meta tensor back to the host gives zeros, so
code that moves results to the CPU (argmax, counts, ``float(loss)``) runs on.

torch's ``FakeTensorMode`` would fake ``cuda`` itself, but on a CPU wheel tensor indexing on a fake
CUDA tensor raises "not linked with support for cuda", and every Llama forward indexes.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

GPU = torch.device("meta")  # the stand-in
aten = torch.ops.aten
_MOVES = {aten._to_copy.default, aten.copy_.default}
_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


class DeviceMismatch(RuntimeError):
    """Two devices met in one op, which CUDA refuses."""


def _devices(args: object) -> set[torch.device]:
    return {
        t.device
        for t in tree_leaves(args)
        if isinstance(t, torch.Tensor) and not (t.device.type == "cpu" and t.dim() == 0)
    }


class SameDevice(TorchDispatchMode):
    """Within the block, an op on tensors of two devices raises ``DeviceMismatch`` naming the op."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _MOVES:
            if func is aten.copy_.default and args[1].device.type == "meta" and args[0].device.type == "cpu":
                return args[0].zero_()
            if func is aten._to_copy.default and args[0].device.type == "meta" and _to_cpu(kwargs):
                return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        elif func is aten._local_scalar_dense.default and args[0].device.type == "meta":
            return 0
        else:
            checked = (args[0], *args[2:]) if func in _INDEXING else (args, kwargs)
            devices = _devices(checked)
            if len(devices) > 1:
                raise DeviceMismatch(f"{func}: tensors on {sorted(map(str, devices))}")
        return func(*args, **kwargs)


def _to_cpu(kwargs: dict) -> bool:
    device = kwargs.get("device")
    return device is not None and torch.device(device).type == "cpu"
