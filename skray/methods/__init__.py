"""Method registry: one module per method; add a method by writing it and naming it here."""
from __future__ import annotations

from skray.backbones import Backbone
from skray.config import MethodConfig
from skray.methods.base import SKModel
from skray.methods.sk_prefix import SKPrefix
from skray.methods.sk_prompt import SKPrompt

METHODS: dict[str, type[SKModel]] = {"sk_prefix": SKPrefix, "sk_prompt": SKPrompt}


def build_model(backbone: Backbone, cfg: MethodConfig, label_names: list[str]) -> SKModel:
    return METHODS[cfg.kind](backbone, cfg, label_names)


__all__ = ["METHODS", "SKModel", "build_model"]
