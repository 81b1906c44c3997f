"""The PEFT baselines SK-Tuning is measured against, built by the ``peft`` library itself.

Each wraps the backbone's base model (hidden states out) as PEFT's feature-extraction model, so
every method shares skray's heads, pooling, data and training loop: only what trains differs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from skray.backbones import Backbone
from skray.config import MethodConfig
from skray.errors import ConfigError
from skray.methods.base import TaskModel

if TYPE_CHECKING:  # peft is imported where a baseline is built: it costs every process ~2 s to import
    from peft import PeftConfig


def peft_config(cfg: MethodConfig, backbone: Backbone) -> PeftConfig:
    """The PEFT config for a baseline kind, sized by the same m (and rank) as SK-Tuning."""
    from peft import LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, PromptTuningInit, TaskType

    task, m = TaskType.FEATURE_EXTRACTION, cfg.prefix_length
    if cfg.kind == "prompt_tuning":
        return PromptTuningConfig(task_type=task, num_virtual_tokens=m, prompt_tuning_init=PromptTuningInit.RANDOM)
    if cfg.kind == "prompt_tuning_text":
        return PromptTuningConfig(
            task_type=task,
            num_virtual_tokens=m,
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=cfg.wording,
            tokenizer_name_or_path=backbone.tokenizer.name_or_path,
        )
    if cfg.kind == "prefix_tuning":
        return PrefixTuningConfig(task_type=task, num_virtual_tokens=m)
    if cfg.kind == "p_tuning":
        return PromptEncoderConfig(task_type=task, num_virtual_tokens=m)
    if cfg.kind == "lora":
        return LoraConfig(
            task_type=task, r=cfg.adapter_rank, lora_alpha=2 * cfg.adapter_rank, target_modules=cfg.lora_target_modules
        )
    raise ValueError(f"not a PEFT baseline: {cfg.kind}")


class PeftBaseline(TaskModel):
    """Prompt tuning (random or text init), prefix tuning, P-tuning or LoRA, as PEFT builds them."""

    def __init__(self, backbone: Backbone, cfg: MethodConfig, label_names: list[str], token_level: bool = False):
        from peft import get_peft_model

        super().__init__(backbone, cfg, label_names, token_level)
        try:
            self.peft = get_peft_model(backbone.model.base_model, peft_config(cfg, backbone))
        except ValueError as err:  # e.g. LoRA target modules that the architecture does not have
            raise ConfigError(f"method.kind {cfg.kind}: {str(err).splitlines()[0]}") from None
        # virtual tokens that are sequence positions come back in the output and are dropped
        self.drop = cfg.prefix_length if cfg.kind in ("prompt_tuning", "prompt_tuning_text", "p_tuning") else 0
        self.prefix_length = cfg.prefix_length if cfg.kind != "lora" else 0
        self.kind = cfg.kind

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.peft(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, self.drop :]
