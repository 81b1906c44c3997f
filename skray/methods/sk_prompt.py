"""SK-Prompt: the prompt's token embeddings, adapted to m positions, are prepended to the input's."""

from __future__ import annotations

import torch
from torch import nn

from skray.backbones import Backbone
from skray.config import MethodConfig
from skray.methods.adapters import prompt_adapter
from skray.methods.base import SKModel


class SKPrompt(SKModel):
    """The frozen model's first stage (token embeddings) reads the prompt: H_s in R^{k x d}.

    An adapter (``method.adapter``) maps H_s to P in R^{m x d}; P is prepended to the input
    embeddings and the whole sequence runs through the frozen model. With ``free`` H_s itself
    trains (the authors' design, prompt tuning started from the wording at m = k).
    """

    def __init__(self, backbone: Backbone, cfg: MethodConfig, label_names: list[str], token_level: bool = False):
        super().__init__(backbone, cfg, label_names, token_level)
        self.adapter = prompt_adapter(
            cfg.adapter, self.prompt_tokens, cfg.prefix_length, self.hidden_size, cfg.adapter_rank
        )

    def _cache_prompt(self) -> None:
        states = self._embed_prompt()
        if self.adapter_kind == "free":
            self.prompt_states = nn.Parameter(states)
        else:
            self.register_buffer("prompt_states", states, persistent=False)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        prefix = self.adapter(self.prompt_states).unsqueeze(0).expand(input_ids.size(0), -1, -1)
        embeds = self.backbone.get_input_embeddings()(input_ids)
        out = self.backbone.base_model(
            inputs_embeds=torch.cat([prefix.to(embeds.dtype), embeds], dim=1),
            attention_mask=self._prefix_mask(attention_mask),
        )
        return out.last_hidden_state[:, self.prefix_length :]
