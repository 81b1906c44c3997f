"""Checks on the driver before Ray starts, so user mistakes fail in a second, not after a launch."""

from __future__ import annotations

from skray.backbones import inspect_backbone
from skray.config import ExperimentConfig
from skray.data import load_splits
from skray.data.collate import check_template_fits
from skray.methods.base import verbalizer_token_ids


def preflight(cfg: ExperimentConfig) -> None:
    """Data loads and labels check out; the backbone resolves (converting it once); the template and
    the head fit it."""
    splits = load_splits(cfg.data)
    info = inspect_backbone(cfg.backbone)
    if cfg.data.task == "classification":
        check_template_fits(info.tokenizer, cfg.data, add_special_tokens=not info.is_decoder)
    if cfg.method.head == "verbalizer":
        verbalizer_token_ids(cfg.method, info.is_decoder, info.tokenizer, splits.label_names)
