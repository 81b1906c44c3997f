"""What Ray Train + DeepSpeed cost over a plain torch loop: the same skray model, batches and optimizer.

One worker, ZeRO 0, fp32, all of the machine's cores for each variant, one at a time, as a ladder
that adds one layer per rung, so the gap to the plain loop splits by where it comes from:

- ``plain``: a torch loop in this process (AdamW over what trains, the same warm-up/decay schedule,
  gradient clipping at 1.0, as skray's DeepSpeed config), no Ray running;
- ``deepspeed``: the same loop through skray's DeepSpeed engine (``build_engine``), in this process;
- ``plain_beside_ray``: the plain loop again, with a local Ray up and idle (GCS, raylet, dashboard,
  agents): what Ray's own processes take from the machine;
- ``ray_actor``: the plain loop inside a Ray actor holding all the CPUs, the driver waiting on it:
  what being a Ray worker process costs (its threads, its environment);
- ``ray_train``: the plain loop as a bare Ray Train worker (``TorchTrainer``, no Tune): Train's
  controller and its actors running beside it;
- ``skray``: ``skray train`` itself, a Ray Train worker running the engine under Tune's driver, its
  ``steady_samples_per_s``.

The three Ray rungs run twice: with Ray's own default for its workers' priority (``RAY_worker_niceness``
15: 15 nicer than Ray's own processes and this one) and with skray's (0, ``skray.cluster``).

Each variant runs ``--steps`` steps of which the first ``--untimed`` are not timed (skray's own
steady-state rule); the table gives steady samples/s and the ratio to the plain loop, per round and
as the median over ``--rounds`` rounds (variants interleaved, so drift hits all alike). Ray is shut
down at the start of each round, so every round's ``plain`` runs on a machine without it.

    python benchmarks/overhead.py [--rounds 2] [--steps 24] [--untimed 4]
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


def in_process(cfg, engine: bool, threads: int | None = None) -> float:
    """Steady samples/s of skray's model trained by a plain loop (or by skray's DeepSpeed engine), with
    ``threads`` torch threads (as a Ray worker sets them from its CPUs; default: as they are)."""
    from skray.backbones import load_backbone
    from skray.data import load_splits
    from skray.data.collate import encode, take
    from skray.methods import build_model
    from skray.train.batches import train_batches
    from skray.train.deepspeed import build_engine, lr_factor
    from skray.train.evaluate import task_loss

    t = cfg.train
    if threads:
        torch.set_num_threads(threads)
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


def in_ray_actor(cfg, cpus: int) -> float:
    """The plain loop in a Ray actor that holds ``cpus`` CPUs."""
    import ray

    runner = ray.remote(num_cpus=cpus)(_Loop).remote()
    try:
        return ray.get(runner.run.remote(cfg, cpus))
    finally:
        ray.kill(runner)


class _Loop:
    def run(self, cfg, cpus: int) -> float:
        return in_process(cfg, engine=False, threads=cpus)


def in_ray_train(cfg, cpus: int, storage: str) -> float:
    """The plain loop as the one worker of a bare Ray Train ``TorchTrainer`` (no Tune); the worker
    writes its number to a file (Train V2 keeps metrics only with a checkpoint)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    out = Path(storage) / f"bare-{time.time_ns()}.txt"

    def loop(config: dict) -> None:
        speed = in_process(config["cfg"], engine=False, threads=config["cpus"])
        Path(config["out"]).write_text(str(speed))

    trainer = TorchTrainer(
        loop,
        train_loop_config={"cfg": cfg, "cpus": cpus, "out": str(out)},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": cpus}),
        run_config=ray.train.RunConfig(storage_path=storage, name=out.stem),
    )
    trainer.fit()
    return float(out.read_text())


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
    import ray

    from skray.cluster import connect

    deepspeed.init_distributed(dist_backend="gloo")  # a world of one, for the in-process engine

    rows = []
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="skray-overhead-") as storage:
        cfg = experiment(args.steps, args.untimed, storage)
        for r in range(args.rounds):
            ray.shutdown()
            measured = {"plain": in_process(cfg, engine=False), "deepspeed": in_process(cfg, engine=True)}
            for niceness in ("15", "0"):  # Ray's own default for its workers, then skray's (skray.cluster)
                os.environ["RAY_worker_niceness"] = niceness
                ray.shutdown()
                connect(None, quiet=True)  # skray's own private local Ray, which ``skray train`` below joins
                time.sleep(10)  # its processes past their start-up
                tag = ", workers nice 15" if niceness == "15" else ""
                if niceness == "15":
                    measured["plain_beside_ray"] = in_process(cfg, engine=False)
                measured[f"ray_actor{tag}"] = in_ray_actor(cfg, cpus)
                measured[f"ray_train{tag}"] = in_ray_train(cfg, cpus, storage)
                measured[f"skray{tag}"] = through_skray(cfg)
            plain = measured["plain"]
            for variant, value in measured.items():
                rows.append({"round": r, "variant": variant, "steady_samples_per_s": value, "ratio": value / plain})
            print(f"round {r}: " + ", ".join(f"{k} {v:.2f}" for k, v in measured.items()) + " samples/s", flush=True)
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
