"""Rows -> padded token tensors. Right padding, so position i of a row is token i of its text."""

from __future__ import annotations

import bisect
import string

import pandas as pd
import torch

from skray.config import DataConfig
from skray.errors import DataError

_FORMATTER = string.Formatter()


def render(template: str, values: dict[str, str]) -> tuple[str, dict[str, tuple[int, int]]]:
    """Fill the template as str.format does, and say where each field's first copy sits (character span),
    so a too-long row can be cut inside its text instead of at the template's end."""
    pieces, spans, pos = [], {}, 0
    for literal, field, spec, conversion in _FORMATTER.parse(template):
        pieces.append(literal)
        pos += len(literal)
        if field is None:
            continue
        value = _FORMATTER.format_field(_FORMATTER.convert_field(values[field], conversion), spec)
        spans.setdefault(field, (pos, pos + len(value)))
        pieces.append(value)
        pos += len(value)
    return "".join(pieces), spans


def _field_values(df: pd.DataFrame) -> list[dict[str, str]]:
    pairs = df["text_pair"] if "text_pair" in df.columns else [""] * len(df)
    return [{"text": t, "text_pair": p} for t, p in zip(df["text"], pairs, strict=True)]


def format_rows(df: pd.DataFrame, cfg: DataConfig) -> list[str]:
    """Fill the template (e.g. "Review: {text}\\nSentiment:") for every row."""
    return [render(cfg.template, v)[0] for v in _field_values(df)]


IGNORE = -100  # label of positions that are not scored (padding, special tokens, later sub-words)


def encode(df: pd.DataFrame, tokenizer, cfg: DataConfig, add_special_tokens: bool) -> dict[str, torch.Tensor]:
    """Tokenize a whole split once; batches are then index slices of these tensors."""
    if cfg.task == "token_classification":
        return encode_words(df, tokenizer, cfg, add_special_tokens)
    enc = tokenizer(
        fit_rows(df, tokenizer, cfg, add_special_tokens),
        add_special_tokens=add_special_tokens,
        padding=True,
        return_tensors="pt",
    )
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "labels": torch.tensor(df["label"].tolist(), dtype=torch.long),
    }


def fit_rows(df: pd.DataFrame, tokenizer, cfg: DataConfig, add_special_tokens: bool) -> list[str]:
    """Every row filled in and within data.max_length tokens. A long row loses the end of its text (and
    text_pair), never the template around it: the cue the head reads ("Sentiment:") must stay."""
    values = _field_values(df)
    rows = format_rows(df, cfg)
    lengths = [len(ids) for ids in tokenizer(rows, add_special_tokens=add_special_tokens, verbose=False)["input_ids"]]
    long = [i for i, n in enumerate(lengths) if n > cfg.max_length]
    if long:
        check_template_fits(tokenizer, cfg, add_special_tokens)
    for i in long:
        rows[i] = _shorten(values[i], tokenizer, cfg, add_special_tokens)
    return rows


def check_template_fits(tokenizer, cfg: DataConfig, add_special_tokens: bool) -> None:
    """The template with an empty text must leave room in data.max_length (checked before launch too)."""
    bare = render(cfg.template, {"text": "", "text_pair": ""})[0]
    n = len(tokenizer(bare, add_special_tokens=add_special_tokens)["input_ids"])
    if n > cfg.max_length:
        raise DataError(
            f"data.template takes {n} tokens with an empty text but data.max_length is {cfg.max_length}; "
            f"raise data.max_length or shorten data.template"
        )


def _shorten(values: dict[str, str], tokenizer, cfg: DataConfig, add_special_tokens: bool) -> str:
    """Cut the text fields by the tokens in excess until the row fits: tokenizing at a cut can shift
    by a token, hence the loop. Every round shortens or empties a field, and empty fields fit."""
    while True:
        row, spans = render(cfg.template, values)
        enc = tokenizer(row, add_special_tokens=add_special_tokens, return_offsets_mapping=True, verbose=False)
        excess = len(enc["input_ids"]) - cfg.max_length
        if excess <= 0:
            return row
        values = _cut(values, spans, enc["offset_mapping"], excess)


def _cut(
    values: dict[str, str], spans: dict[str, tuple[int, int]], offsets: list[tuple[int, int]], excess: int
) -> dict[str, str]:
    """Drop `excess` tokens from the ends of the fields. A token belongs to the field that holds its
    last character (a leading space may come from the template); special tokens have no span."""
    starts = {f: [a for a, b in offsets if b > a and lo <= b - 1 < hi] for f, (lo, hi) in spans.items()}
    cut = dict(values)
    for field, keep in _keep_counts({f: len(s) for f, s in starts.items()}, excess).items():
        tokens, lo = starts[field], spans[field][0]
        if tokens and keep == len(tokens):
            continue  # this field keeps all its tokens
        end = tokens[keep] if tokens else lo  # a field with no tokens of its own (blank) is emptied
        cut[field] = values[field][: max(end - lo, 0)]
    return cut


def _keep_counts(counts: dict[str, int], excess: int) -> dict[str, int]:
    """Tokens each field keeps when `excess` go, taken from the longest field first (HF's longest_first)."""
    budget, keep = max(sum(counts.values()) - excess, 0), {}
    ordered = sorted(counts.items(), key=lambda item: item[1])
    for left, (field, n) in zip(range(len(ordered), 0, -1), ordered, strict=True):
        keep[field] = min(n, budget // left)
        budget -= keep[field]
    return keep


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
    enc = tokenizer(
        texts,
        add_special_tokens=add_special_tokens,
        truncation=True,
        max_length=cfg.max_length,
        padding=True,
        return_offsets_mapping=True,
        return_tensors="pt",
    )
    labels = torch.full(enc["input_ids"].shape, IGNORE, dtype=torch.long)
    for row, (offsets, tags) in enumerate(zip(starts, df["label"], strict=True)):
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
