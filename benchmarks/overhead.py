"""What Ray Train + DeepSpeed cost over a plain torch loop: the same skray model, batches and optimizer.

One worker, ZeRO 0, fp32, all of the machine's cores for each variant, one at a time:

- ``plain``: a torch loop in this process (AdamW over what trains, the same warm-up/decay schedule,
  gradient clipping at 1.0, as skray's DeepSpeed config);
- ``deepspeed``: the same loop through skray's DeepSpeed engine (``build_engine``), in this process;
- ``skray``: ``skray train`` itself, a Ray Train worker running the engine, its ``steady_samples_per_s``.

Each variant runs ``--steps`` steps of which the first ``--untimed`` are not timed (skray's own
steady-state rule); the table gives steady samples/s and the ratio to the plain loop, per round and
as the median over ``--rounds`` rounds (variants interleaved, so drift hits all alike). The first
``skray`` run starts a local Ray that stays up, so from the second round on the in-process loops run
beside Ray's idle processes (GCS, raylet, dashboard): comparing the rounds' plain loops shows what
those cost a 2-core machine.

    python benchmarks/overhead.py [--rounds 2] [--steps 24]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

QUICKSTART = Path(__file__).parents[1] / "experiments" / "quickstart.yaml"


def experiment(steps: int, untimed: int, storage: str):
    """The quickstart's model and data on one ZeRO-0 worker; evaluation kept out of the way."""
    from skray.config import load_config

    return load_config(
        QUICKSTART,
        [
            f"storage_path={storage}",
            "train.num_workers=1",
            "train.zero_stage=0",
            "train.micro_batch_size=8",
            f"train.max_steps={steps}",
            f"train.untimed_steps={untimed}",
            f"train.eval_every={steps}",
            "data.max_eval_samples=16",
            "data.max_test_samples=16",
        ],
    )


def in_process(cfg, engine: bool) -> float:
    """Steady samples/s of skray's model trained by a plain loop (or by skray's DeepSpeed engine)."""
    from skray.backbones import load_backbone
    from skray.data import load_splits
    from skray.data.collate import encode, take
    from skray.methods import build_model
    from skray.train.batches import train_batches
    from skray.train.deepspeed import build_engine, lr_factor
    from skray.train.evaluate import task_loss

    t = cfg.train
    torch.manual_seed(t.seed)
    splits = load_splits(cfg.data)
    backbone = load_backbone(cfg.backbone)
    model = build_model(backbone, cfg.method, splits.label_names)
    data = encode(splits["train"], backbone.tokenizer, cfg.data, add_special_tokens=not backbone.is_decoder)
    batches = train_batches(len(data["labels"]), t.micro_batch_size, 0, 1, t.seed)
    if engine:
        runner = build_engine(model, t)
        runner.train()  # TaskModel.train keeps the frozen backbone in eval mode
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, t.warmup, t.max_steps))
        model.train()
    steady = 0.0
    for step in range(1, t.max_steps + 1):
        start = time.perf_counter()
        batch = take(data, next(batches))
        if engine:
            loss = task_loss(runner(batch["input_ids"], batch["attention_mask"]), batch["labels"])
            runner.backward(loss)
            runner.step()
        else:
            loss = task_loss(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
        loss.item()  # skray's recipe reads the loss every step
        if step > t.untimed_steps:
            steady += time.perf_counter() - start
    return (t.max_steps - t.untimed_steps) * t.micro_batch_size / steady


def through_skray(cfg) -> float:
    """``skray train``'s own steady samples/s (one Ray Train worker, all CPUs)."""
    from skray.run import run_experiment

    _, table = run_experiment(cfg, "train")
    row = table.iloc[0]
    if row.status != "completed":
        raise RuntimeError(f"skray train failed: {row.get('error')}")
    return float(row.steady_samples_per_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--untimed", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)  # what a lone skray run's worker gets
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")  # a world of one, for the in-process engine

    rows = []
    with tempfile.TemporaryDirectory(prefix="skray-overhead-") as storage:
        cfg = experiment(args.steps, args.untimed, storage)
        for r in range(args.rounds):
            plain = in_process(cfg, engine=False)
            engine = in_process(cfg, engine=True)
            ray_train = through_skray(cfg)
            for variant, value in (("plain", plain), ("deepspeed", engine), ("skray", ray_train)):
                rows.append({"round": r, "variant": variant, "steady_samples_per_s": value, "ratio": value / plain})
            print(f"round {r}: plain {plain:.2f}, deepspeed {engine:.2f}, skray {ray_train:.2f} samples/s", flush=True)
    table = pd.DataFrame(rows)
    summary = table.groupby("variant", sort=False).agg(
        steady_samples_per_s=("steady_samples_per_s", "median"),
        ratio_to_plain=("ratio", "median"),
        ratio_min=("ratio", "min"),
        ratio_max=("ratio", "max"),
    )
    print(
        f"\nSK-Prefix on SmolLM2-135M, fp32, micro batch 8 x {cfg.data.max_length} tokens, one worker, "
        f"{torch.get_num_threads()} threads, {args.steps} steps ({args.untimed} untimed), "
        f"median of {args.rounds} rounds\n"
    )
    print(summary.reset_index().to_markdown(index=False, floatfmt=".3g"))
    print(f"\nper round:\n{table.to_markdown(index=False, floatfmt='.3g')}")
    print(f"\n{statistics.median(table[table.variant == 'skray'].ratio):.3f} = skray / plain (target >= 0.95)")


if __name__ == "__main__":
    main()
