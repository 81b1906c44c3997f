"""train_loop_per_worker: the only place a training step happens.

Each Ray Train worker loads the data and the frozen backbone, runs the semantic prompt through
it once, wraps the SK model in a DeepSpeed engine and trains. Rank 0 reports metrics (and a
checkpoint whenever validation accuracy improves); every rank joins each report and each
evaluation, so ZeRO-3's collective parameter gathers stay in step.
"""
from __future__ import annotations

import math
import os
import resource
import shutil
import tempfile
import time

import torch
import torch.nn.functional as F


def _setup_env(use_gpu: bool) -> None:
    """DeepSpeed picks its accelerator at import; on CPU workers it must be told."""
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from skray.backbones import cache_dir

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_dir() / "torch_extensions"))


def _all_reduce(values: list[float], op=None) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def task_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy per row (classification) or per scored token (token classification)."""
    from skray.data.collate import IGNORE

    return F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE, reduction=reduction)


def evaluate(engine, encoded: dict, batch_size: int, rank: int, world: int, device, label_names: list[str]) -> dict[str, float]:
    """Scores and mean loss over a split, sharded over ranks (see skray.train.metrics).

    Every rank runs the same number of batches (the tail is padded with weight-0 rows) because
    under ZeRO-3 each forward is a collective.
    """
    from skray.data.collate import IGNORE, take
    from skray.train.metrics import classification_counts, classification_scores, token_counts, token_scores

    n = len(encoded["labels"])
    token_level = encoded["labels"].dim() == 2
    batches = math.ceil(math.ceil(n / world) / batch_size)
    slots = torch.arange(batches * batch_size * world)
    by_length = torch.argsort(encoded["attention_mask"].sum(1), stable=True)  # similar lengths share a batch: less padding
    weight = (slots < n).float()[rank::world]
    mine = by_length[slots % n][rank::world]
    counts, loss, scored = 0.0, 0.0, 0.0
    engine.eval()
    with torch.no_grad():
        for b in range(batches):
            sl = slice(b * batch_size, (b + 1) * batch_size)
            batch = {k: v.to(device) for k, v in take(encoded, mine[sl]).items()}
            w = weight[sl]
            logits = engine(batch["input_ids"], batch["attention_mask"]).float()
            labels, pred = batch["labels"].cpu(), logits.argmax(-1).cpu()
            row_loss = task_loss(logits, batch["labels"], reduction="none").cpu()
            if token_level:
                counts = counts + token_counts(pred, labels, w, label_names, IGNORE)
                row_w = w.repeat_interleave(labels.size(1))
                loss += float((row_loss * row_w).sum())
                scored += float(((labels.flatten() != IGNORE).float() * row_w).sum())
            else:
                counts = counts + classification_counts(pred, labels, w, len(label_names))
                loss += float((row_loss * w).sum())
                scored += float(w.sum())
    engine.train()
    totals = _all_reduce([*counts.tolist(), loss, scored])
    counts, loss, scored = torch.tensor(totals[:-2], dtype=torch.float64), totals[-2], totals[-1]
    scores = token_scores(counts) if token_level else classification_scores(counts, len(label_names))
    return {**scores, "loss": loss / max(scored, 1.0)}


def _train_batches(n: int, micro: int, rank: int, world: int, seed: int):
    """Endless micro-batches of row indices: a fresh seeded shuffle per epoch, sharded by rank."""
    epoch = 0
    while True:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        shard = torch.randperm(n, generator=g)[rank::world]
        for i in range(0, len(shard) - micro + 1, micro):
            yield shard[i : i + micro]
        epoch += 1


def selection_metric(token_level: bool) -> str:
    """What "best" means: validation accuracy, or span F1 for token classification (most tags are O)."""
    return "f1" if token_level else "accuracy"


def train_loop_per_worker(config: dict) -> None:
    from skray.config import ExperimentConfig

    cfg = ExperimentConfig.model_validate(config["experiment"])
    _setup_env(cfg.train.use_gpu)

    import deepspeed
    import ray.train

    from skray.backbones import load_backbone
    from skray.data import load_splits
    from skray.data.collate import encode, take
    from skray.data.splits import SPLITS
    from skray.methods import build_model
    from skray.train.checkpoint import save_checkpoint
    from skray.train.deepspeed import build_engine, gather_trainable, load_trainable

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config.get("cpus_per_worker", 1))))
    torch.manual_seed(cfg.train.seed)
    device = torch.device(f"cuda:{ctx.get_local_rank()}") if cfg.train.use_gpu else torch.device("cpu")

    token_level = cfg.data.task == "token_classification"
    splits = load_splits(cfg.data)
    labels = splits.label_names
    backbone = load_backbone(cfg.backbone)
    facts = {"backbone_params": backbone.num_parameters, "backbone_bytes": backbone.byte_size}
    model = build_model(backbone, cfg.method, labels, token_level).to(device)
    data = {s: encode(splits[s], backbone.tokenizer, cfg.data, add_special_tokens=not backbone.is_decoder) for s in SPLITS}

    t = cfg.train
    facts.update(
        trainable_params=model.num_trainable(),
        prompt_tokens=model.prompt_tokens,
        world_size=world,
        zero_stage=t.zero_stage,
        lr=t.lr,
    )
    deepspeed.init_distributed(dist_backend="nccl" if t.use_gpu else "gloo")
    engine = build_engine(model, t)  # counts above are taken before ZeRO-3 partitions the parameters
    meta = {
        "backbone": cfg.backbone.name,
        "trust_remote_code": cfg.backbone.trust_remote_code,
        "method": cfg.method.model_dump(),
        "task": cfg.data.task,
        "label_names": labels,
        "template": cfg.data.template,
        "max_length": cfg.data.max_length,
    }
    key = selection_metric(token_level)
    best = {"score": -1.0, "val": {}, "step": 0, "state": None, "checkpoint_bytes": 0, "zero_shot": None}
    train_seconds, train_tokens, losses = 0.0, 0, []

    def run_eval(split: str) -> dict[str, float]:
        return evaluate(engine, data[split], t.eval_batch_size, rank, world, device, labels)

    def report(step: int, final: bool = False) -> None:
        """Evaluate, keep the best state, report; the final report adds test scores of the best state."""
        val = run_eval("validation")
        if step == 0:
            best["zero_shot"] = val
        improved = val[key] > best["score"]
        if improved:
            best.update(score=val[key], val=val, step=step, state=gather_trainable(engine))
        extra = {}
        if final:
            load_trainable(engine, best["state"])
            extra = {f"test_{k}": v for k, v in run_eval("test").items() if k != "loss"} | {"done": True}
        train_loss, tokens = _all_reduce([sum(losses) / max(1, len(losses)), float(train_tokens)])
        (peak,) = _all_reduce([_peak_memory_mb(device)], op=torch.distributed.ReduceOp.MAX)
        losses.clear()
        samples = step * t.micro_batch_size * t.grad_accum * world
        metrics = {
            **facts,
            "step": step,
            **{f"val_{k}": v for k, v in val.items()},
            "train_loss": train_loss / world if step else float("nan"),
            **{f"best_val_{k}": v for k, v in best["val"].items() if k != "loss"},
            "best_step": best["step"],
            **{f"zero_shot_{k}": v for k, v in best["zero_shot"].items() if k != "loss"},
            "train_seconds": train_seconds,
            "samples_per_sec": samples / train_seconds if train_seconds else 0.0,
            "tokens_per_sec": tokens / train_seconds if train_seconds else 0.0,
            "peak_memory_mb": peak,
            "prompt_passes": model.prompt_passes,
            **extra,
        }
        checkpoint_dir = None
        if improved and rank == 0:
            checkpoint_dir = tempfile.mkdtemp(prefix="skray-ckpt-")
            best["checkpoint_bytes"] = save_checkpoint(checkpoint_dir, best["state"], {**meta, "step": step, f"val_{key}": val[key]})
        metrics["checkpoint_bytes"] = best["checkpoint_bytes"]
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)
        if checkpoint_dir:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)

    report(0)

    batches = _train_batches(len(data["train"]["labels"]), t.micro_batch_size, rank, world, t.seed)
    for step in range(1, t.max_steps + 1):
        start = time.perf_counter()
        for _ in range(t.grad_accum):
            batch = {k: v.to(device) for k, v in take(data["train"], next(batches)).items()}
            loss = task_loss(engine(batch["input_ids"], batch["attention_mask"]), batch["labels"])
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
            train_tokens += int(batch["attention_mask"].sum())
        train_seconds += time.perf_counter() - start
        if step % t.eval_every == 0 or step == t.max_steps:
            report(step, final=step == t.max_steps)
