"""Evaluation scores from counts that add up across ranks: each rank counts its shard, one
all-reduce sums them, and the scores come from the sums (exact, not an average of averages).

Classification: accuracy and macro-F1. Token classification: token accuracy and span-level
precision/recall/F1 over entities (IOB tags read by seqeval, as the NER literature reports it).
"""

from __future__ import annotations

import torch
from seqeval.metrics.sequence_labeling import get_entities


def classification_counts(
    pred: torch.Tensor, gold: torch.Tensor, weight: torch.Tensor, num_labels: int
) -> torch.Tensor:
    """[correct, n, true positives per label, predicted per label, gold per label], weighted."""
    hit = (pred == gold).float() * weight
    tp = torch.zeros(num_labels).index_add_(0, gold, hit)
    predicted = torch.zeros(num_labels).index_add_(0, pred, weight)
    actual = torch.zeros(num_labels).index_add_(0, gold, weight)
    return torch.cat([torch.stack([hit.sum(), weight.sum()]), tp, predicted, actual]).double()


def classification_scores(counts: torch.Tensor, num_labels: int) -> dict[str, float]:
    correct, n = counts[0], counts[1]
    tp, predicted, actual = counts[2:].view(3, num_labels)
    seen = (predicted + actual) > 0  # a label absent from both sides does not count (as in sklearn's labels=None)
    f1 = (2 * tp[seen] / (predicted[seen] + actual[seen])).mean() if seen.any() else torch.tensor(0.0)
    return {"acc": float(correct / n.clamp(min=1)), "f1": float(f1)}


def token_counts(
    pred: torch.Tensor, gold: torch.Tensor, weight: torch.Tensor, names: list[str], ignore: int
) -> torch.Tensor:
    """[correct tokens, scored tokens, matched spans, predicted spans, gold spans] over rows of weight 1."""
    counts = torch.zeros(5, dtype=torch.float64)
    for p_row, g_row, w in zip(pred.tolist(), gold.tolist(), weight.tolist(), strict=True):
        if not w:
            continue  # padding rows that only keep ranks in step
        scored = [(p, g) for p, g in zip(p_row, g_row, strict=True) if g != ignore]
        p_tags, g_tags = [names[p] for p, _ in scored], [names[g] for _, g in scored]
        p_spans, g_spans = set(get_entities(p_tags)), set(get_entities(g_tags))
        counts += torch.tensor(
            [sum(p == g for p, g in scored), len(scored), len(p_spans & g_spans), len(p_spans), len(g_spans)],
            dtype=torch.float64,
        )
    return counts


def token_scores(counts: torch.Tensor) -> dict[str, float]:
    correct, n, tp, predicted, actual = counts.tolist()
    precision = tp / predicted if predicted else 0.0
    recall = tp / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"acc": correct / max(n, 1), "precision": precision, "recall": recall, "f1": f1}
