"""SK-Prefix: the whole frozen model reads the prompt; per-layer adapters turn its keys/values into a prefix."""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from skray.backbones import Backbone
from skray.config import MethodConfig
from skray.methods.adapters import KVAdapter
from skray.methods.base import SKModel


class SKPrefix(SKModel):
    """Per layer l: prompt keys/values (k positions) -> KVAdapter_l -> prefix (m positions).

    The input then runs through the frozen model with those prefixes as past keys/values, as in
    prefix tuning / P-tuning v2, with the attention mask extended by m.
    """

    def __init__(self, backbone: Backbone, cfg: MethodConfig, label_names: list[str], token_level: bool = False):
        super().__init__(backbone, cfg, label_names, token_level)
        layers, k, dim = self.prompt_keys.shape
        self.adapters = nn.ModuleList(KVAdapter(k, cfg.prefix_length, dim, cfg.adapter_rank) for _ in range(layers))

    def _cache_prompt(self) -> None:
        cache = DynamicCache(config=self.backbone.config)
        self.backbone.base_model(input_ids=self.prompt_ids, cache=cache, use_cache=True)
        # (1, heads, k, head_dim) per layer -> (layers, k, heads * head_dim)
        self.kv_heads, self.head_dim = cache.layers[0].keys.shape[1], cache.layers[0].keys.shape[3]
        keys = torch.stack([flatten_heads(layer.keys) for layer in cache.layers])
        values = torch.stack([flatten_heads(layer.values) for layer in cache.layers])
        self.register_buffer("prompt_keys", keys, persistent=False)
        self.register_buffer("prompt_values", values, persistent=False)

    def prefix_cache(self, batch_size: int) -> DynamicCache:
        """The adapted prefix as a fresh cache (the forward pass appends to it, so one per call)."""
        cache = DynamicCache(config=self.backbone.config)
        for layer, adapter in enumerate(self.adapters):
            keys, values = adapter(self.prompt_keys[layer], self.prompt_values[layer])
            cache.update(self._per_head(keys, batch_size), self._per_head(values, batch_size), layer)
        return cache

    def _per_head(self, states: torch.Tensor, batch_size: int) -> torch.Tensor:
        """(m, heads * head_dim) -> (batch, heads, m, head_dim), the cache's layout."""
        heads = states.view(self.prefix_length, self.kv_heads, self.head_dim).transpose(0, 1)
        return heads.unsqueeze(0).expand(batch_size, -1, -1, -1)

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The input's positions start at k, right after the prompt the keys/values were computed
        from (they carry its positions 0..k-1), whatever the prefix length m: the backbone's default
        would start them at m and, for m < k, reuse positions the prompt already holds."""
        start = self.prompt_tokens
        return torch.arange(start, start + input_ids.size(1), device=input_ids.device).expand(input_ids.size(0), -1)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.backbone.base_model(
            input_ids=input_ids,
            attention_mask=self._prefix_mask(attention_mask),
            position_ids=self.position_ids(input_ids),
            cache=self.prefix_cache(input_ids.size(0)),
            use_cache=True,
        )
        return out.last_hidden_state


def flatten_heads(states: torch.Tensor) -> torch.Tensor:
    """One layer's cached (1, heads, k, head_dim) -> (k, heads * head_dim)."""
    return states[0].transpose(0, 1).reshape(states.shape[2], -1)
