"""A GPU check that needs little: torch, transformers and DeepSpeed on one device, no Ray, no network.

The same skray code a Ray Train worker runs (the SK-Prefix model, the DeepSpeed engine, the
process group, the sharded evaluation with its all-reduce of CPU counts), on a Llama built from a
config, at ZeRO 2 and 3. It checks that step 0 still equals the model reading the prompt as text,
then times training steps and records peak memory. Any bare single-GPU machine runs it in a few
minutes; without a GPU it runs the same path small (a test runs it so).

    python benchmarks/gpu_smoke.py              # 1b in bf16 on a GPU, tiny in fp32 on CPU
    python benchmarks/gpu_smoke.py --size tiny  # force the small one
    python benchmarks/gpu_smoke.py --precision bf16  # bf16 on the CPU too (slow, but the same numerics)
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import torch

GPU = torch.cuda.is_available()
os.environ["DS_ACCELERATOR"] = "cuda" if GPU else "cpu"  # before DeepSpeed is imported

from gpu_check import llama  # noqa: E402  (beside this script)

from skray.backbones import Backbone  # noqa: E402
from skray.config import MethodConfig, TrainConfig  # noqa: E402
from skray.devices import compute_device, place  # noqa: E402
from skray.methods import build_model  # noqa: E402
from skray.partitioned import dtype_of  # noqa: E402
from skray.train.deepspeed import build_engine, process_group_backend  # noqa: E402
from skray.train.evaluate import evaluate, task_loss  # noqa: E402
from skray.train.recipe import settle_precision  # noqa: E402

WORDING = "Classify the sentiment of the movie review as positive or negative."
TEXTS = ["a moving, funny and beautifully made film", "dull, long and badly acted from start to end"]


def one_process_group() -> None:
    """World size 1, the backend a Ray Train worker would get (gloo, or gloo + NCCL on GPUs)."""
    import deepspeed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    deepspeed.init_distributed(dist_backend=process_group_backend(GPU))


def backbone(size: str, dtype: torch.dtype, device: torch.device) -> Backbone:
    """The gpu_check Llama, frozen, on ``device`` with its weights in ``dtype`` (its buffers as they are,
    as loading in a precision leaves them)."""
    model, tokenizer = llama(size)
    model = model.eval().requires_grad_(False)
    for p in model.parameters():
        p.data = p.data.to(dtype)
    return Backbone(model.to(device), tokenizer, is_decoder=True)


def sk_prefix(bb: Backbone, prefix_length: int, rank: int, dtype: torch.dtype) -> torch.nn.Module:
    """SK-Prefix with a linear head over the backbone, where the backbone is, in the run's ``dtype``:
    the prompt pass runs on the backbone's device, as a Ray Train worker's does."""
    method = MethodConfig(
        kind="sk_prefix", wording=WORDING, prefix_length=prefix_length, head="linear", adapter_rank=rank
    )
    return place(build_model(bb, method, ["neg", "pos"]), compute_device(bb.model), dtype, frozen=bb.model)


def step0_gap(bb: Backbone, device: torch.device, dtype: torch.dtype) -> float:
    """Largest |SK-Prefix logit - logit of the model reading the prompt as text| at m = k."""
    k = len(bb.tokenizer(WORDING)["input_ids"])
    model = sk_prefix(bb, k, 4, dtype)
    gap = 0.0
    with torch.no_grad():
        for text in TEXTS:
            ids = bb.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
            mine = model.encode(ids, torch.ones_like(ids))[0, -1]
            full = torch.cat([model.prompt_ids, ids], dim=1)
            theirs = bb.model.base_model(input_ids=full).last_hidden_state[0, -1]
            gap = max(gap, float((mine.float() - theirs.float()).abs().max()))
    return gap


def train_point(bb: Backbone, stage: int, precision: str, device: torch.device, steps: int, batch: int) -> dict:
    """A DeepSpeed engine at ``stage`` trains ``steps`` steps on random tokens; time, memory, loss."""
    model = sk_prefix(bb, 16, 8, dtype_of(precision))
    engine = build_engine(
        model, TrainConfig(zero_stage=stage, precision=precision, micro_batch_size=batch, max_steps=steps)
    )
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, len(bb.tokenizer), (batch * 4, 64), generator=g)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": (ids[:, 0] % 2)}
    if GPU:
        torch.cuda.reset_peak_memory_stats(device)
    losses, start = [], 0.0
    for step in range(steps):
        if step == 1:  # the first step allocates and warms up; time the rest
            start = time.perf_counter()
        rows = torch.arange(step * batch, (step + 1) * batch) % len(ids)
        b = {k: v[rows].to(device) for k, v in data.items()}
        loss = task_loss(engine(b["input_ids"], b["attention_mask"]), b["labels"])
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    took = time.perf_counter() - start
    scores = evaluate(engine, data, batch_size=batch, rank=0, world=1, device=device, label_names=["neg", "pos"])
    return {
        "zero_stage": stage,
        "precision": precision,
        "steps": steps,
        "tokens_per_s": (steps - 1) * batch * 64 / took,
        "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if GPU else float("nan"),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "eval_acc": scores["acc"],
        "status": "ok" if all(map(torch.isfinite, map(torch.tensor, losses))) else "non-finite loss",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["auto", "1b", "tiny"], default="auto")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument(
        "--precision", choices=["auto", "fp32", "bf16"], default="auto", help="auto: as train.precision auto decides"
    )
    args = p.parse_args()
    size = args.size if args.size != "auto" else ("1b" if GPU else "tiny")
    device = torch.device("cuda", 0) if GPU else torch.device("cpu")
    one_process_group()
    # auto as a worker decides it: bf16 on GPUs of compute capability 8.0 or more, else fp32
    precision = settle_precision(TrainConfig(use_gpu=GPU, precision=args.precision), device, log=True).precision
    dtype = dtype_of(precision)
    name = torch.cuda.get_device_name(0) if GPU else "CPU"
    print(f"device: {name}; torch {torch.__version__}; size {size}; {precision}")
    bb = backbone(size, dtype, device)
    gap = step0_gap(bb, device, dtype)
    print(f"step 0 vs prompt read as text (m = k): max |diff| of the last hidden state = {gap:.3g}")
    import pandas as pd

    rows = [train_point(bb, stage, precision, device, args.steps, batch=8) for stage in (2, 3)]
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"))


if __name__ == "__main__":
    main()
