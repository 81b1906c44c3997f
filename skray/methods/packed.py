"""Several members (method models over one frozen backbone) run in one backbone pass: packed trials.

Each member brings its own rows. What it joins to its input goes into one batch, padded and masked:

- virtual *embeddings* (SK-Prompt; PEFT's prompt tuning and P-tuning): each row is [its m
  embeddings, its tokens], right-padded to the pack's longest, so every row's positions are those of
  its solo run (0..m-1, then m..) and no row starts with padding;
- virtual *keys/values* (SK-Prefix; PEFT's prefix tuning): per layer, a cache of the pack's largest
  m, each row's own m in front and the rest masked; its tokens' positions start where its solo run
  starts them (SK-Prefix: at its prompt length k; prefix tuning: at m);
- nothing (the linear probe): its rows see only their tokens.

Every member's output is cut back to its own rows and width (its solo batch's, trimmed to its
longest row) and goes through its own head, so a member's logits, and the gradients of a loss on
them, are its solo forward's up to float summation order (tests/test_packed.py holds the two to
1e-5). The solo forward is the members' own ``forward``: this module is a second implementation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from transformers import DynamicCache

from skray.methods.base import TaskModel
from skray.methods.heads import MeanLinearHead, pool
from skray.methods.peft_baselines import PeftBaseline
from skray.methods.sk_prefix import SKPrefix, StackedKV, layer_cache, stack_layers
from skray.methods.sk_prompt import SKPrompt

# The kinds whose backbone stays frozen and whose virtual part this module joins (LoRA changes the
# backbone's layers, full fine-tuning trains them).
PEFT_PROMPTS = frozenset({"prompt_tuning", "prompt_tuning_text", "p_tuning"})  # PEFT prepends embeddings
PACKABLE = frozenset({"sk_prefix", "sk_prompt", "linear_probe", "prefix_tuning", *PEFT_PROMPTS})


@dataclass
class Virtual:
    """What one member joins to each of its rows: embeddings (m, d) in front of its tokens, or every
    layer's keys/values, stacked (layers, 1, heads, m, head_dim), with its tokens' positions starting
    at ``start``."""

    embeds: torch.Tensor | None = None
    kv: StackedKV | None = None
    start: int = 0

    @property
    def embeds_length(self) -> int:
        return 0 if self.embeds is None else self.embeds.shape[0]

    @property
    def kv_length(self) -> int:
        return 0 if self.kv is None else self.kv[0].shape[3]


def virtual(member: TaskModel) -> Virtual:
    """A member's virtual part, computed with gradients where it trains."""
    if isinstance(member, SKPrefix):
        return Virtual(kv=member.prefix_stack(), start=member.prompt_tokens)
    if isinstance(member, SKPrompt):
        return Virtual(embeds=member.adapter(member.prompt_states))
    if isinstance(member, PeftBaseline) and member.kind in PACKABLE:
        prompt = member.peft.get_prompt(1)  # PEFT's own: embeddings, or a cache for prefix tuning
        if member.kind == "prefix_tuning":  # PEFT's forward passes it as the past: the input's positions follow it
            kv = stack_layers([(layer.keys, layer.values) for layer in prompt.layers])
            return Virtual(kv=kv, start=member.prefix_length)
        return Virtual(embeds=prompt[0])
    if type(member) is TaskModel:
        return Virtual()
    raise TypeError(f"{type(member).__name__} cannot be packed")


def step0_key(member: TaskModel) -> str:
    """A fingerprint of what a member computes before it trains: its kind of virtual part, the part's
    values and its head's (parameters and buffers). Two members with one key give the same logits on
    every row, so their step-0 scores are computed once (``skray.train.packed``)."""
    digest = hashlib.sha1(type(member).__name__.encode())
    with torch.no_grad():
        part = virtual(member)
        tensors = [part.embeds] if part.embeds is not None else list(part.kv or [])
        tensors += [t for _, t in sorted(member.head.state_dict().items())]
    digest.update(f"{part.start}:{part.embeds_length}:{part.kv_length}:{member.token_level}".encode())
    for t in tensors:
        digest.update(str((t.dtype, tuple(t.shape))).encode())
        digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def packed_forward(
    backbone: torch.nn.Module, members: list[TaskModel], batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> list[torch.Tensor]:
    """Label logits of each member on its own (input_ids, attention_mask), from one pass of ``backbone``
    (the causal LM every member wraps) over all their rows."""
    if not members:
        return []
    parts = [virtual(m) for m in members]
    embed = backbone.get_input_embeddings()
    dtype = embed.weight.dtype
    width = max(p.embeds_length + ids.size(1) for p, (ids, _) in zip(parts, batches, strict=True))
    past = max(p.kv_length for p in parts)
    rows, masks, positions = [], [], []
    for part, (ids, mask) in zip(parts, batches, strict=True):
        n, m = ids.size(0), part.embeds_length
        tail = width - m - ids.size(1)
        pieces = [embed(ids)]
        if m:
            pieces.insert(0, part.embeds.to(dtype).unsqueeze(0).expand(n, -1, -1))
        if tail:
            pieces.append(pieces[-1].new_zeros(n, tail, pieces[-1].size(-1)))
        rows.append(torch.cat(pieces, dim=1))
        kv_mask = mask.new_zeros(n, past)
        kv_mask[:, : part.kv_length] = 1
        masks.append(torch.cat([kv_mask, mask.new_ones(n, m), mask, mask.new_zeros(n, tail)], dim=1))
        positions.append(torch.arange(part.start, part.start + width, device=ids.device).expand(n, -1))
    cache = _packed_cache(backbone, parts, [ids.size(0) for ids, _ in batches], past, dtype) if past else None
    hidden = backbone.base_model(
        inputs_embeds=torch.cat(rows),
        attention_mask=torch.cat(masks),
        position_ids=torch.cat(positions),
        cache=cache,
        use_cache=cache is not None,
    ).last_hidden_state
    logits, first = [], 0
    for member, part, (ids, mask) in zip(members, parts, batches, strict=True):
        own = hidden[first : first + ids.size(0), part.embeds_length : part.embeds_length + ids.size(1)]
        first += ids.size(0)
        logits.append(_head(member, own, mask))
    return logits


def _head(member: TaskModel, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The member's head on its own hidden states, as ``TaskModel.forward`` applies it."""
    if member.token_level or isinstance(member.head, MeanLinearHead):
        return member.head(hidden)
    return member.head(pool(hidden, mask, last_token=member.is_decoder))


def _packed_cache(
    backbone: torch.nn.Module, parts: list[Virtual], sizes: list[int], past: int, dtype: torch.dtype
) -> DynamicCache:
    """Every row's keys/values, all layers at once: its member's m in front, zeros (masked) after;
    zeros for members without any. A few ops per member whatever the depth (a GPU waits on each)."""
    first = next(p.kv for p in parts if p.kv is not None)[0]
    layers, _, heads, _, head_dim = first.shape
    keys, values = [], []
    for part, n in zip(parts, sizes, strict=True):
        if part.kv is None:
            zeros = first.new_zeros(layers, n, heads, past, head_dim, dtype=dtype)
            keys.append(zeros)
            values.append(zeros)
            continue
        for t, into in zip(part.kv, (keys, values), strict=True):
            into.append(F.pad(t.to(dtype), (0, 0, 0, past - part.kv_length)).expand(-1, n, -1, -1, -1))
    return layer_cache(backbone.config, torch.cat(keys, dim=1), torch.cat(values, dim=1))


def packable(kind: str, is_decoder: bool = True) -> bool:
    """Whether a member of ``kind`` can share a pack (decoder backbones: the positions above are a
    causal LM's)."""
    return is_decoder and kind in PACKABLE
