"""A worker's rows of the task, as a solo trial (``skray.train.recipe``) and a packed slot
(``skray.train.packed``) both hold them: every split encoded for the backbone, the class weights the
loss takes, and what any classifier must beat on the very test rows its score comes from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from skray.backbones import Backbone
from skray.config import ExperimentConfig
from skray.data.splits import SPLITS, Splits
from skray.errors import DataError


def check_train_rows(cfg: ExperimentConfig, rows: int, world: int) -> None:
    """A clear error where one step takes more training rows than the train split has."""
    per_step = cfg.train.micro_batch_size * world
    if rows < per_step:
        raise DataError(
            f"train.micro_batch_size {cfg.train.micro_batch_size} x {world} workers takes {per_step} "
            f"training rows per step but the train split has {rows}; lower train.micro_batch_size or raise "
            f"data.max_train_samples"
        )


@dataclass(frozen=True)
class TaskRows:
    data: dict[str, dict[str, torch.Tensor]]  # split -> encoded columns
    class_weight: torch.Tensor | None  # train.class_weights balanced: the loss's per-label weights
    facts: dict[str, Any]  # majority_test_acc, majority_test_f1, test_rows (classification)


def encode_task(cfg: ExperimentConfig, splits: Splits, backbone: Backbone) -> TaskRows:
    from skray.data.collate import encode
    from skray.train.evaluate import balanced_weights, majority_scores

    data = {
        s: encode(splits[s], backbone.tokenizer, cfg.data, add_special_tokens=not backbone.is_decoder) for s in SPLITS
    }
    n_labels = len(splits.label_names)
    weight = balanced_weights(data["train"]["labels"], n_labels) if cfg.train.class_weights == "balanced" else None
    facts: dict[str, Any] = {}
    if cfg.data.task != "token_classification":
        majority = majority_scores(data["test"]["labels"], n_labels)
        facts = {
            "majority_test_acc": majority["acc"],
            "majority_test_f1": majority["f1"],
            "test_rows": len(data["test"]["labels"]),
        }
    return TaskRows(data, weight, facts)
