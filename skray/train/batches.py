"""Which rows each rank trains on, step after step: seeded epochs, equal on every rank, resumable."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def epoch_shard(n: int, micro: int, rank: int, world: int, seed: int, epoch: int) -> torch.Tensor:
    """This rank's rows of one epoch: a seeded shuffle cut to whole micro-batches on every rank, so
    all ranks run the same number of batches per epoch and their epochs (and collectives) stay aligned;
    the fewer than ``world x micro`` rows left over change from epoch to epoch."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    per_rank = n // world // micro * micro
    return torch.randperm(n, generator=g)[: per_rank * world][rank::world]


def train_batches(n: int, micro: int, rank: int, world: int, seed: int, skip: int = 0) -> Iterator[torch.Tensor]:
    """Endless micro-batches of row indices, epoch after epoch.

    ``skip`` batches are passed over first, so a resumed run sees the data a straight run would.
    """
    epoch = 0
    while True:
        shard = epoch_shard(n, micro, rank, world, seed, epoch)
        for i in range(0, len(shard), micro):
            if skip:
                skip -= 1
                continue
            yield shard[i : i + micro]
        epoch += 1
