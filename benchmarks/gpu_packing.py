"""Packed against solo on one GPU: configurations per hour of the quickstart's sweep, with no Ray.

The GPU machine we are lent reaches no package index, and Ray's wheel (79 MB) is more than a call
there may carry, so this runs skray's own worker code in one process, as one Ray Train worker of a
world of 1: a solo configuration is ``SKTuningRecipe`` (load the backbone, build the member, its
DeepSpeed engine, step-0 scores on validation and test, the steps, validation every
``--eval-every``, the best weights on test, a checkpoint at each report), a slot of K is
``PackedSlot`` (the backbone once, K members, the same reports) fed by a broker that hands out the
configurations and stops none. The few ``ray`` calls those make (their context, checkpoints, reports,
the broker's calls) are answered in process (``without_ray``); Ray's own start-up of a worker group
(about 10 s a trial on our CPU) is in neither arm: it would add to solo once per configuration and to
packed once per slot, so the ratio here is a lower bound of what ``skray tune`` gains.

The configurations are the quickstart's space (wording, prefix length, lr; SK-Prefix, verbalizer),
drawn by a seeded sampler in the same order for every arm. The backbone is ``--backbone`` (a Hugging
Face folder; without weights in it, random weights of its config are saved first, so that both arms
load from disk as a trial does; ``--shape`` swaps in another Llama's sizes): random weights measure
time and memory, not accuracy.

    python benchmarks/gpu_packing.py --backbone DIR --data rows.csv [--packs 16 32] [--auto] [--solo 3]
                                     [--shape 1b --set train.zero_stage=3] [--profile]

``--profile`` runs the first configuration once more, solo and short (``PROFILED``: 4 steps, 64
validation and test rows; profilers slow a run several times), under ``cProfile`` and
``torch.profiler``, after the timed arms so it slows none of them, and prints where its wall went:
the device's busy time against the wall, the torch ops by host time, the Python functions by own and
total time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import random
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from gpu_check import SHAPES as LLAMAS  # beside this script: "1b" is TinyLlama-1.1B's sizes
from gpu_smoke import GPU, one_process_group  # sets DS_ACCELERATOR before DeepSpeed is imported

QUICKSTART = Path(__file__).parents[1] / "experiments" / "quickstart.yaml"
# "thin" keeps the backbone's layers and heads at a width of 8 per head: every op of a step is there at
# almost no arithmetic, so its wall on a CPU is the host's cost per op that a fast GPU waits on.
SHAPES = {**LLAMAS, "thin": {"hidden_size": 72, "intermediate_size": 144}}
PROFILED = {"max_steps": 4, "eval_every": 4}, {"max_eval_samples": 64, "max_test_samples": 64}


class _Remote:
    """``actor.method.remote(...)`` answered at once (``ray.get`` of it is the value itself)."""

    def __init__(self, fn):
        self.remote = fn


class Broker:
    """The run's broker as a slot sees it (``skray.broker``): the configurations in order, none stopped early."""

    def __init__(self, offers: list[tuple]):
        self.offers, self.ended = list(offers), {}
        self.ask = _Remote(lambda slot: self.offers.pop(0) if self.offers else None)
        self.tell = _Remote(lambda member, report: "continue")
        self.end = _Remote(lambda member, report, error: self.ended.__setitem__(member, (report, error)))
        self.rejoin = _Remote(lambda slot: [])


def without_ray(storage: Path, reports: list[dict]) -> None:
    """The ``ray`` a Ray Train worker of world size 1 sees: rank 0 of 1, no checkpoint to resume,
    reports kept in ``reports`` and their checkpoints copied under ``storage`` (as Ray persists them)."""
    ray, train, train_torch = (types.ModuleType(n) for n in ("ray", "ray.train", "ray.train.torch"))
    context = types.SimpleNamespace(get_world_rank=lambda: 0, get_world_size=lambda: 1, get_local_world_size=lambda: 1)

    def report(metrics: dict, checkpoint: str | None = None) -> None:
        if checkpoint is not None:
            shutil.copytree(checkpoint, storage / f"checkpoint_{len(reports):06d}")
        reports.append(dict(metrics))

    train.get_context, train.get_checkpoint, train.report = (lambda: context), (lambda: None), report
    train.Checkpoint = types.SimpleNamespace(from_directory=lambda directory: directory)
    train_torch.get_device = lambda: torch.device("cuda", 0) if GPU else torch.device("cpu")
    ray.get, ray.train, train.torch = (lambda value: value), train, train_torch
    sys.modules.update({"ray": ray, "ray.train": train, "ray.train.torch": train_torch})


def backbone_folder(source: Path, shape: str | None, into: Path) -> Path:
    """``source`` itself where it holds weights and no ``shape`` is asked; else its config (resized to
    ``shape``) with random weights and its tokenizer, saved under ``into`` (bf16 on a GPU: loading
    casts them to the run's precision either way)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if shape is None and any(source.glob("*.safetensors")):
        return source
    config = AutoConfig.from_pretrained(source)
    for key, value in SHAPES.get(shape, {}).items():
        setattr(config, key, value)
    config.head_dim = config.hidden_size // config.num_attention_heads
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if GPU else torch.float32)
    target = into / f"backbone-{shape or source.name}"
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    print(f"backbone: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, random weights", flush=True)
    return target


def configurations(n: int, seed: int, space: dict) -> list[dict]:
    """``n`` draws of the quickstart's space (``search`` section): wording, prefix length, log-uniform lr."""
    rng = random.Random(seed)
    m, lr = space["prefix_length"], space["lr"]
    return [
        {
            "wording": rng.choice(space["wordings"]),
            "prefix_length": rng.randint(m["low"], m["high"]),
            "lr": 10 ** rng.uniform(math.log10(lr["low"]), math.log10(lr["high"])),
        }
        for _ in range(n)
    ]


def experiment(base, params: dict, storage: Path):
    """The run's experiment with one configuration's settings, validated as a tune trial's method is
    (``method_variant``; ``skray.commands.tune`` itself imports Ray)."""
    from skray.config import method_variant

    method = method_variant(base.method, {k: params[k] for k in ("wording", "prefix_length")})
    train = base.train.model_copy(update={"lr": params["lr"]})
    return base.model_copy(update={"method": method, "train": train, "storage_path": str(storage)})


def peak_mb() -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if GPU else float("nan")


def reset_peak() -> None:
    if GPU:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def solo(base, params: list[dict], storage: Path) -> list[dict]:
    """Each configuration alone, one after another, as Tune runs one trial per GPU."""
    from skray.train.recipe import SKTuningRecipe

    rows = []
    for i, p in enumerate(params):
        reports: list[dict] = []
        directory = storage / f"solo-{i}"
        directory.mkdir(parents=True)
        without_ray(directory, reports)
        reset_peak()
        start = time.perf_counter()
        recipe = SKTuningRecipe(experiment(base, p, directory), cpus_per_worker=os.cpu_count() or 1)
        recipe.setup()
        recipe.train()
        wall = time.perf_counter() - start
        last, s = reports[-1], recipe.state
        rows.append(
            {
                "arm": "solo",
                "config": i,
                "wall_s": wall,
                "steps_s": s.train_s,
                "eval_s": s.eval_s,
                "other_s": wall - s.train_s - s.eval_s,
                "peak_mb": peak_mb(),
                "test_acc": last.get("test_acc"),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        del recipe
    return rows


def profile(base, params: dict, storage: Path) -> None:
    """One short solo configuration under both profilers: is its wall the device's work or the host's?"""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from skray.train.recipe import SKTuningRecipe

    reports: list[dict] = []
    storage.mkdir(parents=True)
    without_ray(storage, reports)
    cfg = experiment(base, params, storage)
    train, data = (
        part.model_copy(update={k: min(v, getattr(part, k) or v) for k, v in short.items()})
        for part, short in zip((cfg.train, cfg.data), PROFILED, strict=True)
    )
    cfg = cfg.model_copy(update={"train": train, "data": data})
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if GPU else [])
    python = cProfile.Profile()
    start = time.perf_counter()
    with torch_profile(activities=activities) as ops:
        python.enable()
        recipe = SKTuningRecipe(cfg, cpus_per_worker=os.cpu_count() or 1)
        recipe.setup()
        recipe.train()
        python.disable()
    wall = time.perf_counter() - start
    events = ops.key_averages()
    busy = sum(e.self_device_time_total for e in events) / 1e6 if GPU else float("nan")
    s = recipe.state
    print(
        f"profile: wall {wall:.1f} s (profiled), steps {s.train_s:.1f} s, evaluation {s.eval_s:.1f} s, "
        f"device busy {busy:.1f} s, torch threads {torch.get_num_threads()}",
        flush=True,
    )
    print(events.table(sort_by="self_cpu_time_total", row_limit=25), flush=True)
    if GPU:
        print(events.table(sort_by="self_device_time_total", row_limit=15), flush=True)
    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(python, stream=text).sort_stats(order).print_stats(30)
        print(text.getvalue(), flush=True)


def packed(base, params: list[dict], storage: Path, auto: bool) -> dict:
    """One slot of ``len(params)`` members (with ``auto``, of the seats its step time pays for, at most
    that), fed until every configuration has run."""
    from skray.train.packed import PackedSlot

    reports: list[dict] = []
    without_ray(storage, reports)
    offers = [(f"m{i:08d}", p, experiment(base, p, storage).model_dump()) for i, p in enumerate(params)]
    broker = Broker(offers)
    reset_peak()
    start = time.perf_counter()
    cfg = experiment(base, params[0], storage)
    slot = PackedSlot(cfg, os.cpu_count() or 1, broker, 0, len(params), str(storage), auto)
    slot.setup()
    slot.run()
    wall = time.perf_counter() - start
    failed = {m: e for m, (_, e) in broker.ended.items() if e}
    tests = [r["test_acc"] for r, _ in broker.ended.values() if r and "test_acc" in r]
    row = {
        "arm": f"packed {len(params)}",
        "configs": len(params),
        "seats": slot.pack,
        "wall_s": wall,
        **{k: slot.timing[k] for k in ("setup_s", "seats_s", "steps_s", "eval_s", "write_s")},
        "peak_mb": peak_mb(),
        "failed": len(failed),
        "test_acc_mean": sum(tests) / len(tests) if tests else float("nan"),
    }
    print(json.dumps(row), flush=True)
    if failed:
        print(f"failed members: {json.dumps(failed)[:2000]}", flush=True)
    del slot
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", type=Path, required=True, help="a Hugging Face folder (config and tokenizer at least)")
    p.add_argument("--shape", choices=sorted(SHAPES), help="another Llama's sizes over the backbone's config")
    p.add_argument("--data", required=True, help="the rows (a .csv with text, label and split columns)")
    p.add_argument("--packs", type=int, nargs="+", default=[16, 32])
    p.add_argument("--auto", action="store_true", help="slots keep the seats their step time pays for (pack auto)")
    p.add_argument("--solo", type=int, default=3, help="configurations run solo (median wall: one's)")
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--eval-every", type=int, default=12)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    p.add_argument("--profile", action="store_true", help="then profile the first configuration solo")
    args = p.parse_args()

    from skray.config import load_config

    one_process_group()
    with tempfile.TemporaryDirectory(prefix="skray-gpu-packing-") as tmp:
        storage = Path(tmp)
        folder = backbone_folder(args.backbone, args.shape, storage)
        base = load_config(
            QUICKSTART,
            [
                f"backbone.name={folder}",
                f"data.name={args.data}",
                "train.num_workers=1",
                "train.micro_batch_size=8",  # the quickstart's 2 workers x 4 rows, on one device
                f"train.use_gpu={GPU}",
                "train.precision=auto",
                f"train.max_steps={args.steps}",
                f"train.eval_every={args.eval_every}",
                *args.set,
            ],
        )
        space = base.search.model_dump()
        params = configurations(max([*args.packs, args.solo]), 0, space)
        name = torch.cuda.get_device_name(0) if GPU else "CPU"
        print(f"device: {name}; torch {torch.__version__}; backbone {args.shape or args.backbone.name}", flush=True)
        rows = solo(base, params[: args.solo], storage / "solo")
        import pandas as pd

        solo_rows = pd.DataFrame(rows)
        per_config = solo_rows.wall_s.median()  # the first also pays the process's warm-up (CUDA context, kernels)
        table = [
            {
                "arm": "solo",
                "configs": len(rows),
                "wall_s": solo_rows.wall_s.sum(),
                "configs_per_hour": 3600 / per_config,
                "ratio": 1.0,
                "steps_s": solo_rows.steps_s.sum(),
                "eval_s": solo_rows.eval_s.sum(),
                "peak_mb": solo_rows.peak_mb.max(),
            }
        ]
        for k in args.packs:
            row = packed(base, params[:k], storage / f"packed-{k}", args.auto)
            row["configs_per_hour"] = 3600 * k / row["wall_s"]
            row["ratio"] = row["configs_per_hour"] / table[0]["configs_per_hour"]
            table.append(row)
        print(solo_rows.to_markdown(index=False, floatfmt=".4g"))
        print(pd.DataFrame(table).to_markdown(index=False, floatfmt=".4g"))
        if args.profile:
            profile(base, params[0], storage / "profile")


if __name__ == "__main__":
    main()
