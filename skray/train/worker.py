"""train_loop_per_worker: the only place a training step happens.

Each Ray Train worker loads the data and the frozen backbone, builds the method's model (for SK
methods the semantic prompt runs through the backbone once), settles the ZeRO stage (``auto``:
the first that fits, from a memory estimate), wraps the model in a DeepSpeed engine and trains.
Every rank joins each evaluation and each report, so ZeRO-3's collectives stay in step.

Each report carries a checkpoint that every rank writes its part of (Ray Train gathers them in
one directory): DeepSpeed's state of what trains (frozen weights excluded), optimizer and
schedule included, plus the best trainable state so far as safetensors. A worker group that
Ray Train restarts after a failure resumes from it: same step, optimizer and data position.
"""

from __future__ import annotations

import math
import os
import resource
import tempfile
import time
from pathlib import Path

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


def _reset_peak_memory(device: torch.device) -> None:
    """Start the peak from here, so it is training's peak and not that of loading the backbone whole."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets this process's peak RSS
    except OSError:
        pass  # elsewhere the peak includes loading


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def task_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy per row (classification) or per scored token (token classification)."""
    from skray.data.collate import IGNORE

    return F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE, reduction=reduction)


def evaluate(
    engine, encoded: dict, batch_size: int, rank: int, world: int, device, label_names: list[str]
) -> dict[str, float]:
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
    by_length = torch.argsort(
        encoded["attention_mask"].sum(1), stable=True
    )  # similar lengths share a batch: less padding
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


def epoch_shard(n: int, micro: int, rank: int, world: int, seed: int, epoch: int) -> torch.Tensor:
    """This rank's rows of one epoch: a seeded shuffle cut to whole micro-batches on every rank, so
    all ranks run the same number of batches per epoch and their epochs (and collectives) stay aligned;
    the fewer than ``world x micro`` rows left over change from epoch to epoch."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    per_rank = n // world // micro * micro
    return torch.randperm(n, generator=g)[: per_rank * world][rank::world]


def _train_batches(n: int, micro: int, rank: int, world: int, seed: int, skip: int = 0):
    """Endless micro-batches of row indices, epoch after epoch.

    ``skip`` batches are passed over first, so a resumed run sees the data a straight run would.
    """
    epoch = 0
    while True:
        shard = epoch_shard(n, micro, rank, world, seed, epoch)
        for i in range(0, len(shard), micro):
            if skip:
                skip -= 1
                continue
            yield shard[i : i + micro]
        epoch += 1


def held_param_bytes(engine) -> int:
    """Parameter bytes this rank holds: its ZeRO-3 partition, or whole parameters below stage 3."""
    held = (getattr(p, "ds_tensor", p) for p in engine.module.parameters())
    return sum(t.numel() * t.element_size() for t in held)


def settle_zero(model, t, world: int, local_world: int, device, batch: dict) -> tuple:
    """The ZeRO setting this run uses and its memory estimate (DeepSpeed's estimators plus the
    activations of one measured micro batch). ``zero_stage: auto`` takes the first setting that
    fits the smallest budget of any rank, and says so in one line."""
    from skray.train.memory import choose, estimate, measure_activation_bytes, model_counts, worker_budget_bytes

    counts = model_counts(model, t.precision)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[t.precision]
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        activations = measure_activation_bytes(model, batch["input_ids"], batch["attention_mask"])
    if t.zero_stage != "auto":
        return t, estimate(
            **counts, world_size=world, stage=t.zero_stage, offload=t.offload, activation_bytes=activations
        )
    (budget,) = _all_reduce(
        [float(worker_budget_bytes(t.use_gpu, local_world, device))], op=torch.distributed.ReduceOp.MIN
    )
    est = choose(**counts, world_size=world, activation_bytes=activations, budget_bytes=int(budget), use_gpu=t.use_gpu)
    print(est.line(int(budget)), flush=True)
    return t.model_copy(update={"zero_stage": est.stage, "offload": est.offload}), est


def selection_metric(token_level: bool) -> str:
    """What "best" means: validation accuracy, or span F1 for token classification (most tags are O)."""
    return "f1" if token_level else "accuracy"


def train_loop_per_worker(config: dict) -> None:
    from skray.config import ExperimentConfig

    started = time.perf_counter()
    cfg = ExperimentConfig.model_validate(config["experiment"])
    _setup_env(cfg.train.use_gpu)

    import deepspeed
    import ray.train

    from skray.backbones import load_backbone
    from skray.data import load_splits
    from skray.data.collate import encode, take
    from skray.data.splits import SPLITS
    from skray.errors import DataError
    from skray.methods import build_model
    from skray.train.checkpoint import read_resume_state, write_resume_state
    from skray.train.deepspeed import build_engine, gather_trainable, load_trainable

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config.get("cpus_per_worker", 1))))
    torch.manual_seed(cfg.train.seed)
    device = torch.device(f"cuda:{ctx.get_local_rank()}") if cfg.train.use_gpu else torch.device("cpu")

    token_level = cfg.data.task == "token_classification"
    splits = load_splits(cfg.data)
    rows, per_step = len(splits["train"]), cfg.train.micro_batch_size * world
    if rows < per_step:
        raise DataError(
            f"train.micro_batch_size {cfg.train.micro_batch_size} x {world} workers takes {per_step} training rows "
            f"per step "
            f"but the train split has {rows}; lower train.micro_batch_size or raise data.max_train_samples"
        )
    labels = splits.label_names
    backbone = load_backbone(cfg.backbone)
    facts = {"backbone_params": backbone.num_parameters, "backbone_bytes": backbone.byte_size}
    model = build_model(backbone, cfg.method, labels, token_level).to(device)
    data = {
        s: encode(splits[s], backbone.tokenizer, cfg.data, add_special_tokens=not backbone.is_decoder) for s in SPLITS
    }

    deepspeed.init_distributed(dist_backend="nccl" if cfg.train.use_gpu else "gloo")
    first = {
        k: v.to(device)
        for k, v in take(data["train"], torch.arange(cfg.train.micro_batch_size) % len(data["train"]["labels"])).items()
    }
    t, est = settle_zero(model, cfg.train, world, ctx.get_local_world_size(), device, first)
    facts.update(
        trainable_params=model.num_trainable(),  # counted before ZeRO-3 partitions the parameters
        prompt_tokens=model.prompt_tokens,
        world_size=world,
        zero_stage=t.zero_stage,
        offload=t.offload,
        micro_batch_size=t.micro_batch_size,
        lr=t.lr,
        estimated_memory_mb=est.total_bytes / 2**20,
    )
    engine = build_engine(model, t)
    facts["param_bytes_per_worker"] = held_param_bytes(engine)
    _reset_peak_memory(device)
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
    # Everything a resumed run needs besides DeepSpeed's own state; the best weights are best_state.
    run = {
        "step": 0,
        "best_score": -1.0,
        "best_val": {},
        "best_step": 0,
        "zero_shot": {},
        "checkpoint_bytes": 0,
        "train_seconds": 0.0,
        "train_tokens": 0,
        "steady_seconds": 0.0,
        "steady_steps": 0,
        "steady_tokens": 0,
        "eval_seconds": 0.0,
        "time_to_first_step": None,
        "resumed_from": 0,
    }
    best_state = None
    restored = ray.train.get_checkpoint()
    if restored:
        with restored.as_directory() as directory:
            run, best_state = read_resume_state(engine, directory)
        run["resumed_from"] = run["step"]
    losses: list[float] = []

    def run_eval(split: str) -> dict[str, float]:
        start = time.perf_counter()
        scores = evaluate(engine, data[split], t.eval_batch_size, rank, world, device, labels)
        run["eval_seconds"] += time.perf_counter() - start
        return scores

    def report(step: int, final: bool = False) -> None:
        """Evaluate, keep the best state, checkpoint, report; the final report adds test scores of the best state."""
        nonlocal best_state
        val = run_eval("validation")
        if step == 0:
            run["zero_shot"] = val
        if val[key] > run["best_score"]:
            run.update(best_score=val[key], best_val=val, best_step=step)
            best_state = gather_trainable(engine)
        extra = {}
        if final:
            load_trainable(engine, best_state)
            extra = {f"test_{k}": v for k, v in run_eval("test").items() if k != "loss"} | {"done": True}
        train_loss, tokens, steady_tokens = _all_reduce(
            [sum(losses) / max(1, len(losses)), float(run["train_tokens"]), float(run["steady_tokens"])]
        )
        (peak,) = _all_reduce([_peak_memory_mb(device)], op=torch.distributed.ReduceOp.MAX)
        losses.clear()
        per_step = t.micro_batch_size * t.grad_accum * world
        seconds, steady = run["train_seconds"], run["steady_seconds"]
        metrics = {
            **facts,
            "step": step,
            **{f"val_{k}": v for k, v in val.items()},
            "train_loss": train_loss / world if step else float("nan"),
            **{f"best_val_{k}": v for k, v in run["best_val"].items() if k != "loss"},
            "best_step": run["best_step"],
            **{f"zero_shot_{k}": v for k, v in run["zero_shot"].items() if k != "loss"},
            "train_seconds": seconds,
            "samples_per_sec": step * per_step / seconds if seconds else 0.0,
            "tokens_per_sec": tokens / seconds if seconds else 0.0,
            "steady_samples_per_sec": run["steady_steps"] * per_step / steady if steady else float("nan"),
            "steady_tokens_per_sec": steady_tokens / steady if steady else float("nan"),
            "time_to_first_step": run["time_to_first_step"],
            "peak_memory_mb": peak,
            "prompt_passes": model.prompt_passes,
            "resumed_from": run["resumed_from"],
            **extra,
        }
        run["step"] = step
        with tempfile.TemporaryDirectory(prefix="skray-ckpt-") as directory:
            size = write_resume_state(
                engine,
                directory,
                run,
                best_state if rank == 0 else None,
                {**meta, "step": run["best_step"], f"val_{key}": run["best_score"]},
            )
            if rank == 0:
                run["checkpoint_bytes"] = size
            metrics["checkpoint_bytes"] = run["checkpoint_bytes"]
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))

    if not restored:  # a restored run already reported step 0: reports are made once per step
        report(0)
    batches = _train_batches(
        len(data["train"]["labels"]), t.micro_batch_size, rank, world, t.seed, skip=run["step"] * t.grad_accum
    )
    for step in range(run["step"] + 1, t.max_steps + 1):
        start = time.perf_counter()
        tokens = 0
        for _ in range(t.grad_accum):
            batch = {k: v.to(device) for k, v in take(data["train"], next(batches)).items()}
            loss = task_loss(engine(batch["input_ids"], batch["attention_mask"]), batch["labels"])
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
            tokens += int(batch["attention_mask"].sum())
        took = time.perf_counter() - start
        run["train_seconds"] += took
        run["train_tokens"] += tokens
        if step > run["resumed_from"] + t.untimed_steps:  # steady state: allocations and caches warmed up
            run.update(
                steady_seconds=run["steady_seconds"] + took,
                steady_steps=run["steady_steps"] + 1,
                steady_tokens=run["steady_tokens"] + tokens,
            )
        if run["time_to_first_step"] is None:
            run["time_to_first_step"] = time.perf_counter() - started - run["eval_seconds"]
        if step % t.eval_every == 0 or step == t.max_steps:
            report(step, final=step == t.max_steps)
