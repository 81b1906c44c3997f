"""Rows -> padded token tensors. Right padding, so position i of a row is token i of its text."""
from __future__ import annotations

import pandas as pd
import torch

from skray.config import DataConfig


def format_rows(df: pd.DataFrame, cfg: DataConfig) -> list[str]:
    """Fill the template (e.g. "Review: {text}\\nSentiment:") for every row."""
    pairs = df["text_pair"] if "text_pair" in df.columns else [""] * len(df)
    return [cfg.template.format(text=t, text_pair=p) for t, p in zip(df["text"], pairs)]


def encode(df: pd.DataFrame, tokenizer, cfg: DataConfig, add_special_tokens: bool) -> dict[str, torch.Tensor]:
    """Tokenize a whole split once; batches are then index slices of these tensors."""
    enc = tokenizer(
        format_rows(df, cfg),
        add_special_tokens=add_special_tokens,
        truncation=True,
        max_length=cfg.max_length,
        padding=True,
        return_tensors="pt",
    )
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "labels": torch.tensor(df["label"].tolist(), dtype=torch.long),
    }


def take(encoded: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """A batch of rows, trimmed to its longest row so short batches cost less."""
    batch = {k: v[index] for k, v in encoded.items()}
    width = int(batch["attention_mask"].sum(1).max().clamp(min=1))
    batch["input_ids"] = batch["input_ids"][:, :width]
    batch["attention_mask"] = batch["attention_mask"][:, :width]
    return batch
