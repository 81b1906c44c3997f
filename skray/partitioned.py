"""Forward passes over a ZeRO-3-partitioned model outside a DeepSpeed engine, one module whole at a time.

A backbone built inside ``deepspeed.zero.Init`` holds only its partition of every weight. Inside
an engine, DeepSpeed's hooks gather each module's weights while it runs; before the engine exists
(the frozen prompt pass, the verbalizer's label rows, the activation probe) skray does the same
here, so that no rank ever holds more than its partition plus the one module that is running.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn


def is_partitioned(model: nn.Module) -> bool:
    """Whether ZeRO-3 partitioned this model's parameters (each then carries a ``ds_id``)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


@contextlib.contextmanager
def gathered(params: list[nn.Parameter]) -> Iterator[None]:
    """These parameters whole on every rank for the block (a collective); a no-op when not partitioned."""
    if not any(hasattr(p, "ds_id") for p in params):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


@contextlib.contextmanager
def module_by_module(model: nn.Module) -> Iterator[None]:
    """Within the block, each module's own parameters are gathered while its forward runs and
    released when it returns. Every rank must run the same forwards (gathering is a collective)."""
    if not is_partitioned(model):
        yield
        return
    import deepspeed

    open_gathers: dict[int, list] = {}

    def before(module: nn.Module, args: tuple) -> None:
        gather = deepspeed.zero.GatheredParameters(list(module.parameters(recurse=False)), modifier_rank=None)
        gather.__enter__()
        open_gathers.setdefault(id(module), []).append(gather)

    def after(module: nn.Module, args: tuple, output: object) -> None:
        open_gathers[id(module)].pop().__exit__(None, None, None)

    owners = [m for m in model.modules() if next(m.parameters(recurse=False), None) is not None]
    handles = [h for m in owners for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def full_numel(p: nn.Parameter) -> int:
    """Elements of the whole parameter, also when ZeRO-3 holds only a partition of it here."""
    return getattr(p, "ds_numel", p.numel())


def largest_module_params(model: nn.Module) -> int:
    """The most parameters one module owns (not counting its children): what ZeRO 3 gathers at once."""
    return max((sum(full_numel(p) for p in m.parameters(recurse=False)) for m in model.modules()), default=0)


def materialized_param_bytes(params: list[nn.Parameter]) -> int:
    """Parameter bytes this rank holds right now: whole tensors, plus its ZeRO-3 partitions."""
    total = 0
    for p in params:
        total += p.data.numel() * p.element_size()
        partition = getattr(p, "ds_tensor", None)
        if partition is not None:
            total += partition.numel() * partition.element_size()
    return total


class ParamPeak:
    """The most parameter bytes this rank held at once, from load time through the first training step.

    Only ZeRO 3 changes what a rank holds as modules run (it gathers each module's weights for its
    forward and backward), so only a partitioned model is sampled as every module's forward returns
    (its weights still gathered: ZeRO 3 releases them in hooks registered after this one) and as its
    backward starts; otherwise the bytes are read when attached and at each ``sample`` call. A sample
    is a pass over the parameters, so the hooks come off at ``detach``: sampling on every module of a
    model that never gathers cost a solo trial most of its step-0 evaluation (a profile, 2026-12-04)."""

    def __init__(self, model: nn.Module):
        self.params = list(model.parameters())
        self.peak = materialized_param_bytes(self.params)
        self._handles = []
        if is_partitioned(model):
            modules = list(model.modules())
            self._handles = [m.register_forward_hook(self._hook) for m in modules]
            self._handles += [m.register_full_backward_pre_hook(self._hook) for m in modules]
        self._attached = True

    def _hook(self, module: nn.Module, *args: object) -> None:
        self.sample()

    def sample(self) -> int:
        """The peak so far, this moment included (while attached)."""
        if self._attached:
            self.peak = max(self.peak, materialized_param_bytes(self.params))
        return self.peak

    def detach(self) -> int:
        """Stop sampling; return the peak."""
        self.sample()
        for handle in self._handles:
            handle.remove()
        self._handles, self._attached = [], False
        return self.peak


def dtype_of(precision: str) -> torch.dtype:
    """The torch dtype weights are held in for ``train.precision`` (resolved: fp32, bf16 or fp16)."""
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def checkpoint_index(folder: str) -> dict[str, tuple[Path, dict, int]] | None:
    """Tensor name -> (file, its safetensors header entry, where the file's data starts), for a
    Hugging Face folder of safetensors files; None when the folder holds none (a hub id, .bin files)."""
    files = sorted(Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []
    index = {}
    for path in files:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        header.pop("__metadata__", None)
        index |= {name: (path, entry, 8 + size) for name, entry in header.items()}
    return index or None


def load_into_partitions(model: nn.Module, index: dict[str, tuple[Path, dict, int]]) -> None:
    """Fill a model built inside ``zero.Init`` from its checkpoint, one module at a time: every rank
    gathers that module, rank 0 reads its tensors with plain file reads (no memory map, so no rank
    ever maps the whole checkpoint, as transformers' ZeRO-3 loader does on rank 0) and copies them
    in, and the module is partitioned again. A collective: every rank calls it."""
    import deepspeed
    import torch.distributed as dist

    rank0 = dist.get_rank() == 0
    seen: set[int] = set()  # a tied weight (LM head = input embedding) loads once, under its first name
    for prefix, module in model.named_modules():
        own = [(f"{prefix}.{n}" if prefix else n, p) for n, p in module.named_parameters(recurse=False)]
        own = [(n, p) for n, p in own if id(p) not in seen]
        seen.update(id(p) for _, p in own)
        if not own:
            continue
        with deepspeed.zero.GatheredParameters([p for _, p in own], modifier_rank=0), torch.no_grad():
            if rank0:
                for name, p in own:
                    p.data.copy_(_read_tensor(*index[name]).to(p.dtype))


def _read_tensor(path: Path, entry: dict, data_start: int) -> torch.Tensor:
    begin, end = entry["data_offsets"]
    with path.open("rb") as f:
        f.seek(data_start + begin)
        raw = bytearray(f.read(end - begin))
    return torch.frombuffer(raw, dtype=_SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])
