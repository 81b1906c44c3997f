"""Method registry: one module per family; add a method by writing it and naming it here."""

from __future__ import annotations

from skray.backbones import Backbone
from skray.config import MethodConfig
from skray.methods.base import FullFineTune, SKModel, TaskModel
from skray.methods.peft_baselines import PeftBaseline
from skray.methods.sk_prefix import SKPrefix
from skray.methods.sk_prompt import SKPrompt

METHODS: dict[str, type[TaskModel]] = {
    "sk_prefix": SKPrefix,
    "sk_prompt": SKPrompt,
    "prompt_tuning": PeftBaseline,
    "prompt_tuning_text": PeftBaseline,
    "prefix_tuning": PeftBaseline,
    "p_tuning": PeftBaseline,
    "lora": PeftBaseline,
    "full_finetune": FullFineTune,
    "linear_probe": TaskModel,
}


def build_model(backbone: Backbone, cfg: MethodConfig, label_names: list[str], token_level: bool = False) -> TaskModel:
    """The model for ``cfg.kind``; it owns ``backbone`` from here on (some methods change it in place)."""
    return METHODS[cfg.kind](backbone, cfg, label_names, token_level)


__all__ = ["METHODS", "SKModel", "TaskModel", "build_model"]
