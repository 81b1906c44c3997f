"""Adapter shapes for any k -> m, their identity start, and padding-free pooling."""

import pytest
import torch

from skray.methods.adapters import KVAdapter, PromptAdapter, resample_matrix
from skray.methods.heads import pool


@pytest.mark.parametrize(("k", "m"), [(1, 1), (5, 3), (13, 8), (8, 13), (16, 64), (64, 16)])
def test_adapter_shapes(k, m):
    states = torch.randn(k, 24)
    assert PromptAdapter(k, m, 24, rank=4)(states).shape == (m, 24)
    keys, values = KVAdapter(k, m, 24, rank=4)(states, states * 2)
    assert keys.shape == values.shape == (m, 24)
    w = resample_matrix(m, k)
    assert torch.allclose(w.sum(1), torch.ones(m))


def test_adapter_starts_as_identity_when_m_equals_k():
    states = torch.randn(7, 24)
    assert torch.equal(resample_matrix(7, 7), torch.eye(7))
    assert torch.allclose(PromptAdapter(7, 7, 24, rank=4)(states), states)


def test_resampling_averages_when_shrinking():
    states = torch.arange(4.0).unsqueeze(1)
    out = PromptAdapter(4, 2, 1, rank=1)(states)
    assert torch.allclose(out.squeeze(1), torch.tensor([0.5, 2.5]))


@pytest.mark.parametrize("last_token", [True, False])
def test_pooling_ignores_padding(last_token):
    hidden = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    before = pool(hidden, mask, last_token)
    hidden[0, 3:] = 1e6  # garbage in padded positions
    after = pool(hidden, mask, last_token)
    assert torch.allclose(before, after)
    expected = hidden[0, 2] if last_token else hidden[0, :3].mean(0)
    assert torch.allclose(after[0], expected)
