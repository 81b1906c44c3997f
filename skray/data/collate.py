"""Rows -> padded token tensors. Right padding, so position i of a row is token i of its text."""
from __future__ import annotations

import bisect

import pandas as pd
import torch

from skray.config import DataConfig


def format_rows(df: pd.DataFrame, cfg: DataConfig) -> list[str]:
    """Fill the template (e.g. "Review: {text}\\nSentiment:") for every row."""
    pairs = df["text_pair"] if "text_pair" in df.columns else [""] * len(df)
    return [cfg.template.format(text=t, text_pair=p) for t, p in zip(df["text"], pairs)]


IGNORE = -100  # label of positions that are not scored (padding, special tokens, later sub-words)


def encode(df: pd.DataFrame, tokenizer, cfg: DataConfig, add_special_tokens: bool) -> dict[str, torch.Tensor]:
    """Tokenize a whole split once; batches are then index slices of these tensors."""
    if cfg.task == "token_classification":
        return encode_words(df, tokenizer, cfg, add_special_tokens)
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


def encode_words(df: pd.DataFrame, tokenizer, cfg: DataConfig, add_special_tokens: bool) -> dict[str, torch.Tensor]:
    """Words joined by spaces; each word's tag goes on its first sub-word token, the rest get IGNORE.

    Tokens are mapped to words through character offsets (any fast tokenizer has them), by the
    token's last character, so a leading space inside a token does not move it to the previous
    word. Words cut off by max_length are not scored.
    """
    texts, starts = [], []
    for words in df["text"]:
        offsets, pos = [], 0
        for w in words:
            offsets.append(pos)
            pos += len(w) + 1
        texts.append(" ".join(words))
        starts.append(offsets)
    enc = tokenizer(texts, add_special_tokens=add_special_tokens, truncation=True, max_length=cfg.max_length,
                    padding=True, return_offsets_mapping=True, return_tensors="pt")
    labels = torch.full(enc["input_ids"].shape, IGNORE, dtype=torch.long)
    for row, (offsets, tags) in enumerate(zip(starts, df["label"])):
        done = set()
        for t, (a, b) in enumerate(enc["offset_mapping"][row].tolist()):
            if b <= a or not enc["attention_mask"][row, t]:
                continue  # special or padding token
            word = bisect.bisect_right(offsets, b - 1) - 1
            if word not in done:
                labels[row, t] = tags[word]
                done.add(word)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def take(encoded: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """A batch of rows, trimmed to its longest row so short batches cost less."""
    batch = {k: v[index] for k, v in encoded.items()}
    width = int(batch["attention_mask"].sum(1).max().clamp(min=1))
    batch["input_ids"] = batch["input_ids"][:, :width]
    batch["attention_mask"] = batch["attention_mask"][:, :width]
    if batch["labels"].dim() == 2:  # token labels follow the tokens
        batch["labels"] = batch["labels"][:, :width]
    return batch
