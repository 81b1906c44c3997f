"""SK-Prefix: the whole frozen model reads the prompt; adapters turn its keys/values into a prefix."""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from skray.backbones import Backbone
from skray.config import MethodConfig
from skray.methods.adapters import kv_adapter
from skray.methods.base import SKModel

LayerKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values as (1, heads, positions, head_dim)
StackedKV = tuple[torch.Tensor, torch.Tensor]  # keys, values of every layer: (layers, 1, heads, positions, head_dim)


class SKPrefix(SKModel):
    """Per layer l: prompt keys/values (k positions) -> adapter -> prefix (m positions).

    The input then runs through the frozen model with those prefixes as past keys/values, as in
    prefix tuning / P-tuning v2, with the attention mask extended by m. The prompt pass is cached,
    except with ``adapter: free`` (the authors' design): the wording's embeddings train, so the
    frozen model reads them again, with gradients, on every forward.
    """

    def __init__(self, backbone: Backbone, cfg: MethodConfig, label_names: list[str], token_level: bool = False):
        super().__init__(backbone, cfg, label_names, token_level)
        if cfg.adapter != "free":
            layers, k, dim = self.prompt_keys.shape
            self.adapters = kv_adapter(cfg.adapter, layers, k, cfg.prefix_length, dim, self.head_dim, cfg.adapter_rank)

    def _cache_prompt(self) -> None:
        if self.adapter_kind == "free":
            self.prompt_embeds = nn.Parameter(self._embed_prompt())
            return
        layers = self._read_prompt(input_ids=self.prompt_ids)
        self.kv_heads, self.head_dim = layers[0][0].shape[1], layers[0][0].shape[3]
        # (1, heads, k, head_dim) per layer -> (layers, k, heads * head_dim)
        self.register_buffer("prompt_keys", torch.stack([flatten_heads(k) for k, _ in layers]), persistent=False)
        self.register_buffer("prompt_values", torch.stack([flatten_heads(v) for _, v in layers]), persistent=False)

    def _read_prompt(self, **inputs: torch.Tensor) -> LayerKV:
        """The frozen model reads the prompt (ids, or embeddings); its keys and values per layer."""
        cache = DynamicCache(config=self.backbone.config)
        self.backbone.base_model(**inputs, cache=cache, use_cache=True)
        return [(layer.keys, layer.values) for layer in cache.layers]

    def prefix_stack(self) -> StackedKV:
        """The prefix's keys and values, every layer's stacked, for one row (m positions)."""
        if self.adapter_kind == "free":
            self.prompt_passes += 1
            return stack_layers(self._read_prompt(inputs_embeds=self.prompt_embeds.unsqueeze(0)))
        keys, values = self.adapters(self.prompt_keys, self.prompt_values)
        return self._per_head(keys), self._per_head(values)

    def prefix_kv(self) -> LayerKV:
        """The prefix's keys and values per layer, for one row (m positions)."""
        keys, values = self.prefix_stack()
        return list(zip(keys.unbind(0), values.unbind(0), strict=True))

    def prefix_cache(self, batch_size: int) -> DynamicCache:
        """The prefix as a fresh cache (the forward pass appends to it, so one per call)."""
        keys, values = (t.expand(-1, batch_size, -1, -1, -1) for t in self.prefix_stack())
        return layer_cache(self.backbone.config, keys, values)

    def _per_head(self, states: torch.Tensor) -> torch.Tensor:
        """(layers, m, heads * head_dim) -> (layers, 1, heads, m, head_dim), the cache's layout."""
        return states.unflatten(-1, (self.kv_heads, self.head_dim)).transpose(1, 2).unsqueeze(1)

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


def stack_layers(layers: LayerKV) -> StackedKV:
    """Per-layer keys and values, stacked over the layers."""
    return torch.stack([k for k, _ in layers]), torch.stack([v for _, v in layers])


def layer_cache(config: object, keys: torch.Tensor, values: torch.Tensor) -> DynamicCache:
    """A cache holding stacked (layers, rows, heads, positions, head_dim) keys and values, one layer each."""
    cache = DynamicCache(config=config)
    for layer, (k, v) in enumerate(zip(keys.unbind(0), values.unbind(0), strict=True)):
        cache.update(k, v, layer)
    return cache


def flatten_heads(states: torch.Tensor) -> torch.Tensor:
    """One layer's cached (1, heads, k, head_dim) -> (k, heads * head_dim)."""
    return states[0].transpose(0, 1).reshape(states.shape[2], -1)
