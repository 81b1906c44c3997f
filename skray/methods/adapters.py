"""The trainable parts of SK-Prompt and SK-Prefix: skray's k -> m token mixer and the authors'-style variants.

Design (README.md, "How the method is built", "Any wording to any prefix length"): the frozen pass
gives k prompt states; a learned (m x k) mixing over the token axis emits m positions, so any
wording maps to any prefix length. The mixer starts as an area-resampling matrix (identity when
m == k) and the refiner as a zero-initialised low-rank residual, so step 0 *is* the model reading
the prompt as text (exactly when m == k, a resampled prompt otherwise).

The variants (``method.adapter``, README "Adapter variants") adapt each of the k states in place
(m = k), each starting at the identity: ``linear`` (a bias-free square map, the authors' optional
transform) and ``mlp`` (a zero-initialised bottleneck residual). ``free`` has no adapter here: the
prompt's embeddings themselves train (skray/methods/sk_prompt.py, sk_prefix.py).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from skray.partitioned import is_partitioned

Adapter = Literal["mixer", "linear", "mlp", "free"]
Cached = Literal["mixer", "linear", "mlp"]  # the kinds that adapt the cached prompt pass (free reruns it)
Refined = Literal["mixer", "mlp"]  # a token mixer (identity for mlp), then residual refiners


def resample_matrix(m: int, k: int) -> torch.Tensor:
    """(m x k) weights: output i averages the slice [i*k/m, (i+1)*k/m) of the k inputs."""
    w = torch.zeros(m, k)
    for i in range(m):
        lo, hi = i * k / m, (i + 1) * k / m
        for j in range(int(math.floor(lo)), min(k, int(math.ceil(hi)))):
            w[i, j] = min(hi, j + 1) - max(lo, j)
    return w / w.sum(1, keepdim=True)


class TokenMixer(nn.Module):
    """Maps (..., k, d) to (..., m, d) with a learned mix over the token axis."""

    def __init__(self, k: int, m: int):
        super().__init__()
        self.weight = nn.Parameter(resample_matrix(m, k))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        # Frozen states are buffers; under bf16/fp16 DeepSpeed casts the parameters, so follow them.
        return torch.einsum("mk,...kd->...md", self.weight, states.to(self.weight.dtype))


class LowRankResidual(nn.Module):
    """x + (x A) B with B = 0 at start: an identity that learns a rank-r correction."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.down = nn.Parameter(torch.randn(dim, rank) / math.sqrt(dim))
        self.up = nn.Parameter(torch.zeros(rank, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (x @ self.down) @ self.up


class BottleneckResidual(nn.Module):
    """x + up(gelu(down(x))) with up = 0 at start: the mlp variant, an identity that learns a nonlinear
    correction of each state through ``hidden`` units (2 * dim * hidden + hidden + dim parameters)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.down.weight.dtype)  # frozen states are buffers: follow the parameters' dtype
        return x + self.up(F.gelu(self.down(x)))


class IdentityLinear(nn.Linear):
    """The linear variant: a bias-free square map of the last axis, as the authors' optional transform,
    but started at the identity (theirs starts at random) so that step 0 is the prompt read as text."""

    def __init__(self, dim: int):
        super().__init__(dim, dim, bias=False)
        nn.init.eye_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.weight.dtype))


def _mixer(kind: Refined, k: int, m: int) -> nn.Module:
    return TokenMixer(k, m) if kind == "mixer" else nn.Identity()


def _refiner(kind: Refined, dim: int, rank: int) -> nn.Module:
    return LowRankResidual(dim, rank) if kind == "mixer" else BottleneckResidual(dim, rank)


class PromptAdapter(nn.Module):
    """Token mixer then refiner: k frozen prompt states in, m trainable virtual positions out
    (mlp: no mixer, m = k, a bottleneck refiner)."""

    def __init__(self, k: int, m: int, dim: int, rank: int, kind: Refined = "mixer"):
        super().__init__()
        self.mix = _mixer(kind, k, m)
        self.refine = _refiner(kind, dim, rank)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.refine(self.mix(states))


class KVAdapter(nn.Module):
    """One layer of SK-Prefix: a shared mixer keeps keys and values aligned, each gets a refiner
    (mlp: no mixer, m = k, bottleneck refiners)."""

    def __init__(self, k: int, m: int, dim: int, rank: int, kind: Refined = "mixer"):
        super().__init__()
        self.mix = _mixer(kind, k, m)
        self.refine_k = _refiner(kind, dim, rank)
        self.refine_v = _refiner(kind, dim, rank)

    def forward(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.refine_k(self.mix(keys)), self.refine_v(self.mix(values))


class PerLayer(nn.ModuleList):
    """One KVAdapter per layer, applied to the stacked (layers, k, dim) prompt keys and values.

    All layers run at once: each weight stacked over the layers and KVAdapter's forward vmapped over
    them, a dozen ops whatever the depth. A loop over layers issues ~10 small ops per layer, forward
    and backward, for every member of a packed pass, and a GPU waits on each (docs/SCALING.md). A
    partitioned adapter (ZeRO 3 gathers each layer's weights as its own forward runs) keeps the loop."""

    def forward(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if is_partitioned(self):
            pairs = [adapter(k, v) for adapter, k, v in zip(self, keys, values, strict=True)]
            return torch.stack([k for k, _ in pairs]), torch.stack([v for _, v in pairs])
        per_layer = [dict(adapter.named_parameters()) for adapter in self]
        stacked = {name: torch.stack([layer[name] for layer in per_layer]) for name in per_layer[0]}
        one = self[0]
        return torch.func.vmap(lambda w, k, v: torch.func.functional_call(one, w, (k, v)))(stacked, keys, values)


class SharedHeadLinear(nn.Module):
    """SK-Prefix's linear variant: one Linear(head_dim, head_dim) for every head of every layer, keys
    and values alike, as the authors' optional prefix transform (head_dim^2 parameters in all)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.proj = IdentityLinear(head_dim)

    def forward(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._each_head(keys), self._each_head(values)

    def _each_head(self, states: torch.Tensor) -> torch.Tensor:
        return self.proj(states.unflatten(-1, (-1, self.head_dim))).flatten(-2)


def prompt_adapter(kind: Adapter, k: int, m: int, dim: int, rank: int) -> nn.Module:
    """SK-Prompt's map of the (k, dim) prompt embeddings to (m, dim); free has none (the embeddings train)."""
    if kind == "free":
        return nn.Identity()
    if kind == "linear":
        return IdentityLinear(dim)
    return PromptAdapter(k, m, dim, rank, kind)


def kv_adapter(kind: Cached, layers: int, k: int, m: int, dim: int, head_dim: int, rank: int) -> nn.Module:
    """SK-Prefix's map of the stacked (layers, k, dim) cached prompt keys and values to (layers, m, dim)."""
    if kind == "linear":
        return SharedHeadLinear(head_dim)
    return PerLayer(KVAdapter(k, m, dim, rank, kind) for _ in range(layers))
