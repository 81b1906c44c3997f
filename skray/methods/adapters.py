"""The trainable parts SK-Prompt and SK-Prefix share: a k -> m token mixer and a low-rank refiner.

Design (README.md, "How the method is built", "Any wording to any prefix length"): the frozen pass
gives k prompt states; a learned (m x k) mixing over the token axis emits m positions, so any
wording maps to any prefix length. The mixer starts as an area-resampling matrix (identity when
m == k) and the refiner as a zero-initialised low-rank residual, so step 0 *is* the model reading
the prompt as text (exactly when m == k, a resampled prompt otherwise).
"""

from __future__ import annotations

import math

import torch
from torch import nn


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


class PromptAdapter(nn.Module):
    """Token mixer then refiner: k frozen prompt states in, m trainable virtual positions out."""

    def __init__(self, k: int, m: int, dim: int, rank: int):
        super().__init__()
        self.mix = TokenMixer(k, m)
        self.refine = LowRankResidual(dim, rank)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.refine(self.mix(states))


class KVAdapter(nn.Module):
    """One layer of SK-Prefix: a shared mixer keeps keys and values aligned, each gets a refiner."""

    def __init__(self, k: int, m: int, dim: int, rank: int):
        super().__init__()
        self.mix = TokenMixer(k, m)
        self.refine_k = LowRankResidual(dim, rank)
        self.refine_v = LowRankResidual(dim, rank)

    def forward(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.refine_k(self.mix(keys)), self.refine_v(self.mix(values))
