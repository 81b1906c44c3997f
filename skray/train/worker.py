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


def evaluate(engine, encoded: dict, batch_size: int, rank: int, world: int, device) -> tuple[float, float]:
    """Accuracy and mean loss over a split, sharded over ranks.

    Every rank runs the same number of batches (the tail is padded with weight-0 rows) because
    under ZeRO-3 each forward is a collective.
    """
    from skray.data.collate import take

    n = len(encoded["labels"])
    batches = math.ceil(math.ceil(n / world) / batch_size)
    slots = torch.arange(batches * batch_size * world)
    by_length = torch.argsort(encoded["attention_mask"].sum(1), stable=True)  # similar lengths share a batch: less padding
    weight = (slots < n).float()[rank::world]
    mine = by_length[slots % n][rank::world]
    correct = loss = 0.0
    engine.eval()
    with torch.no_grad():
        for b in range(batches):
            sl = slice(b * batch_size, (b + 1) * batch_size)
            batch = {k: v.to(device) for k, v in take(encoded, mine[sl]).items()}
            w = weight[sl].to(device)
            logits = engine(batch["input_ids"], batch["attention_mask"]).float()
            correct += float(((logits.argmax(-1) == batch["labels"]).float() * w).sum())
            loss += float((F.cross_entropy(logits, batch["labels"], reduction="none") * w).sum())
    engine.train()
    correct, loss = _all_reduce([correct, loss])
    return correct / n, loss / n


def _train_batches(n: int, micro: int, rank: int, world: int, seed: int):
    """Endless micro-batches of row indices: a fresh seeded shuffle per epoch, sharded by rank."""
    epoch = 0
    while True:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        shard = torch.randperm(n, generator=g)[rank::world]
        for i in range(0, len(shard) - micro + 1, micro):
            yield shard[i : i + micro]
        epoch += 1


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

    splits = load_splits(cfg.data)
    backbone = load_backbone(cfg.backbone)
    model = build_model(backbone, cfg.method, splits.label_names).to(device)
    data = {s: encode(splits[s], backbone.tokenizer, cfg.data, add_special_tokens=not backbone.is_decoder) for s in SPLITS}

    t = cfg.train
    facts = {
        "trainable_params": model.num_trainable(),
        "backbone_params": backbone.num_parameters,
        "backbone_bytes": backbone.byte_size,
        "prompt_tokens": model.prompt_tokens,
        "world_size": world,
        "zero_stage": t.zero_stage,
    }
    deepspeed.init_distributed(dist_backend="nccl" if t.use_gpu else "gloo")
    engine = build_engine(model, t)  # counts above are taken before ZeRO-3 partitions the parameters
    meta = {
        "backbone": cfg.backbone.name,
        "trust_remote_code": cfg.backbone.trust_remote_code,
        "method": cfg.method.model_dump(),
        "label_names": splits.label_names,
        "template": cfg.data.template,
        "max_length": cfg.data.max_length,
    }
    best = {"val_accuracy": -1.0, "step": 0, "state": None, "checkpoint_bytes": 0, "zero_shot": None}
    train_seconds, losses = 0.0, []

    def report(step: int, final: bool = False) -> None:
        """Evaluate, keep the best state, report; the final report adds test accuracy of the best state."""
        acc, val_loss = evaluate(engine, data["validation"], t.eval_batch_size, rank, world, device)
        if step == 0:
            best["zero_shot"] = acc
        improved = acc > best["val_accuracy"]
        if improved:
            best.update(val_accuracy=acc, step=step, state=gather_trainable(engine))
        extra = {}
        if final:
            load_trainable(engine, best["state"])
            extra = {"test_accuracy": evaluate(engine, data["test"], t.eval_batch_size, rank, world, device)[0], "done": True}
        (train_loss,) = _all_reduce([sum(losses) / max(1, len(losses))])
        (peak,) = _all_reduce([_peak_memory_mb(device)], op=torch.distributed.ReduceOp.MAX)
        losses.clear()
        samples = step * t.micro_batch_size * t.grad_accum * world
        metrics = {
            **facts,
            "step": step,
            "val_accuracy": acc,
            "val_loss": val_loss,
            "train_loss": train_loss / world if step else float("nan"),
            "best_val_accuracy": best["val_accuracy"],
            "best_step": best["step"],
            "zero_shot_accuracy": best["zero_shot"],
            "train_seconds": train_seconds,
            "samples_per_sec": samples / train_seconds if train_seconds else 0.0,
            "peak_memory_mb": peak,
            "prompt_passes": model.prompt_passes,
            **extra,
        }
        checkpoint_dir = None
        if improved and rank == 0:
            checkpoint_dir = tempfile.mkdtemp(prefix="skray-ckpt-")
            best["checkpoint_bytes"] = save_checkpoint(checkpoint_dir, best["state"], {**meta, "step": step, "val_accuracy": acc})
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
            loss = F.cross_entropy(engine(batch["input_ids"], batch["attention_mask"]).float(), batch["labels"])
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        train_seconds += time.perf_counter() - start
        if step % t.eval_every == 0 or step == t.max_steps:
            report(step, final=step == t.max_steps)
