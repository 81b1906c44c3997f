"""The task loss, and scores over a split sharded across ranks (exact: counts are summed, then scored)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from skray.data.collate import IGNORE, take
from skray.train.metrics import classification_counts, classification_scores, token_counts, token_scores


def all_reduce(values: list[float], op: dist.ReduceOp.RedOpType | None = None) -> list[float]:
    """Sum (or ``op``) a few numbers over the ranks; the values themselves in a single process."""
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


def task_loss(
    logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean", weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy per row (classification) or per scored token (token classification); ``weight``
    per label (``train.class_weights``), the mean then weighted as torch's is."""
    return F.cross_entropy(
        logits.float().flatten(0, -2),
        labels.flatten(),
        weight=None if weight is None else weight.to(logits.device),
        ignore_index=IGNORE,
        reduction=reduction,
    )


def balanced_weights(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """n / (labels x count) per label over the scored labels (IGNORE left out): a rare label's rows
    weigh as much in all as a common one's; a label absent from the split gets 0."""
    scored = labels[labels != IGNORE]
    counts = torch.bincount(scored, minlength=num_labels).float()
    return torch.where(counts > 0, len(scored) / (num_labels * counts.clamp(min=1)), torch.zeros_like(counts))


def majority_scores(labels: torch.Tensor, num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 of always answering the most frequent label: what a classifier must beat
    (scored as ``evaluate`` scores a model, so the two read on one scale)."""
    gold = labels[labels != IGNORE]
    if not gold.numel():
        return {"acc": float("nan"), "f1": float("nan")}
    pred = torch.full_like(gold, int(torch.bincount(gold).argmax()))
    return classification_scores(classification_counts(pred, gold, torch.ones(len(gold)), num_labels), num_labels)


def eval_shard(
    encoded: dict[str, torch.Tensor], batch_size: int, rank: int, world: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """This rank's rows of a split (sorted by length, so similar lengths share a batch), their weights
    (0 for the padding rows that give every rank the same number of batches) and that number."""
    n = len(encoded["labels"])
    batches = math.ceil(math.ceil(n / world) / batch_size)
    slots = torch.arange(batches * batch_size * world)
    by_length = torch.argsort(encoded["attention_mask"].sum(1), stable=True)
    return by_length[slots % n][rank::world], (slots < n).float()[rank::world], batches


def evaluate(
    engine: torch.nn.Module,
    encoded: dict[str, torch.Tensor],
    *,
    batch_size: int,
    rank: int,
    world: int,
    device: torch.device,
    label_names: list[str],
    predictions: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Scores and mean loss over a split, sharded over ranks (see skray.train.metrics).

    Every rank runs the same number of batches (the tail is padded with weight-0 rows) because
    under ZeRO-3 each forward is a collective. The engine is left in train mode. Given a dict
    ``predictions`` (classification), every rank also gets each row's predicted label there, as
    ``predictions["pred"]`` in the split's row order (``gather_rows``).
    """
    engine.eval()
    try:
        (scores,) = evaluate_many(
            lambda ids, mask: [engine(ids, mask)],
            1,
            encoded,
            batch_size=batch_size,
            rank=rank,
            world=world,
            device=device,
            label_names=label_names,
            predictions=None if predictions is None else [predictions],
        )
    finally:
        engine.train()
    return scores


def evaluate_many(
    forward: Callable[[torch.Tensor, torch.Tensor], list[torch.Tensor]],
    k: int,
    encoded: dict[str, torch.Tensor],
    *,
    batch_size: int,
    rank: int,
    world: int,
    device: torch.device,
    label_names: list[str],
    predictions: list[dict[str, torch.Tensor]] | None = None,
) -> list[dict[str, float]]:
    """``evaluate`` for the ``k`` models whose logits one call of ``forward(input_ids, attention_mask)``
    gives (one model, or a pack of them in one pass: ``skray.train.packed``), in evaluation mode already;
    one all-reduce for all of them, and ``predictions`` a dict per model."""
    token_level = encoded["labels"].dim() == 2
    mine, weight, batches = eval_shard(encoded, batch_size, rank, world)
    counts: list = [0.0] * k
    loss, scored = [0.0] * k, 0.0
    rows: list[torch.Tensor] = []
    preds: list[list[torch.Tensor]] = [[] for _ in range(k)]
    with torch.no_grad():
        for b in range(batches):
            sl = slice(b * batch_size, (b + 1) * batch_size)
            batch = {key: v.to(device) for key, v in take(encoded, mine[sl]).items()}
            w, labels = weight[sl], batch["labels"].cpu()
            row_w = w.repeat_interleave(labels.size(1)) if token_level else w
            scored += float(((labels.flatten() != IGNORE).float() * row_w).sum()) if token_level else float(w.sum())
            rows.append(mine[sl][w > 0])
            for i, logits in enumerate(forward(batch["input_ids"], batch["attention_mask"])):
                logits = logits.float()
                pred = logits.argmax(-1).cpu()
                if token_level:
                    counts[i] = counts[i] + token_counts(pred, labels, w, label_names, IGNORE)
                else:
                    counts[i] = counts[i] + classification_counts(pred, labels, w, len(label_names))
                    preds[i].append(pred[w > 0])
                loss[i] += float((task_loss(logits, batch["labels"], reduction="none").cpu() * row_w).sum())
    if predictions is not None and not token_level:
        done = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
        for own, pred in zip(predictions, preds, strict=True):
            own["pred"] = gather_rows(len(encoded["labels"]), done, pred)
    width = len(counts[0])
    totals = all_reduce([x for i in range(k) for x in [*counts[i].tolist(), loss[i]]] + [scored])
    scores = []
    for i in range(k):
        own = totals[i * (width + 1) : (i + 1) * (width + 1)]
        summed = torch.tensor(own[:-1], dtype=torch.float64)
        scored_by = token_scores(summed) if token_level else classification_scores(summed, len(label_names))
        scores.append({**scored_by, "loss": own[-1] / max(totals[-1], 1.0)})
    return scores


def gather_rows(n: int, rows: torch.Tensor, values: list[torch.Tensor]) -> torch.Tensor:
    """(n,) integers, each row's value from the rank that scored it (each row is scored by exactly one
    rank; the padding rows are left out), on every rank: one max-reduce over a tensor of -1s."""
    out = torch.full((n,), -1.0, dtype=torch.float64)
    if len(rows):
        out[rows] = torch.cat(values).double()
    return torch.tensor(all_reduce(out.tolist(), op=dist.ReduceOp.MAX), dtype=torch.float64).long()


PREDICTIONS = "test_predictions.csv"  # beside the final checkpoint's weights: row, gold, pred per test row


def save_predictions(directory: str, gold: torch.Tensor, pred: torch.Tensor) -> None:
    """The final test's per-row predictions (row index in the test split, gold and predicted label index),
    what a compare's paired test reads (``skray.results.paired_test``)."""
    import os

    lines = [
        "row,gold,pred",
        *(f"{i},{g},{p}" for i, (g, p) in enumerate(zip(gold.tolist(), pred.tolist(), strict=True))),
    ]
    with open(os.path.join(directory, PREDICTIONS), "w") as f:
        f.write("\n".join(lines) + "\n")
