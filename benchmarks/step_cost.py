"""What one training step costs: SK-Tuning with the cached prompt pass vs re-running it, vs PEFT.

On the real SmolLM2-135M, same batch and input length, every variant takes the same optimizer
step (AdamW over its trainable parameters, loss on the last position's label-word scores).
Variants run interleaved (round robin) and repeated; the table gives the median step time, the
bytes autograd holds for backward (activations, plus frozen weights by reference: deterministic, unlike RSS on a
shared CPU), and ratios beside what token counts predict.

    python benchmarks/step_cost.py [--repeats 5] [--threads 2]

"Re-run" is how the authors' code does it: every forward runs the prompt through the frozen
model at batch size, with gradients, because their prompt embeddings train.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch
import torch.nn.functional as F
from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

from skray.backbones import load_backbone
from skray.config import BackboneConfig, MethodConfig
from skray.methods import SKPrefix, SKPrompt
from skray.methods.sk_prefix import flatten_heads

BATCH, M = 8, 16
SIZES = [(16, 32), (16, 64), (16, 128), (64, 32), (64, 128)]  # (prompt tokens k, input length n)
LABELS = ["rotten", "fresh"]
WORDS = {"rotten": " negative", "fresh": " positive"}
SENTENCE = "Classify the sentiment of the movie review as positive or negative, and think about what the critic meant. "


class RerunPrompt(torch.nn.Module):
    """Trainable prompt embeddings (k x d), as in the authors' code: they force a prompt pass per step."""

    def __init__(self, model: SKPrefix | SKPrompt):
        super().__init__()
        self.embeds = torch.nn.Parameter(model.backbone.get_input_embeddings()(model.prompt_ids)[0].detach().clone())


class SKPrefixRerun(SKPrefix):
    def __init__(self, *args):
        super().__init__(*args)
        self.rerun = RerunPrompt(self)

    def encode(self, input_ids, attention_mask):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.backbone.config)
        embeds = self.rerun.embeds.unsqueeze(0).expand(input_ids.size(0), -1, -1)
        self.backbone.base_model(inputs_embeds=embeds, cache=cache, use_cache=True)
        self.prompt_passes += 1
        # the cached variant's layout, from batch row 0
        self.prompt_keys = torch.stack([flatten_heads(layer.keys) for layer in cache.layers])
        self.prompt_values = torch.stack([flatten_heads(layer.values) for layer in cache.layers])
        return super().encode(input_ids, attention_mask)


class SKPromptRerun(SKPrompt):
    def __init__(self, *args):
        super().__init__(*args)
        self.rerun = RerunPrompt(self)

    def encode(self, input_ids, attention_mask):
        self.prompt_states = (
            self.rerun.embeds * 1
        )  # a tensor, not a Parameter: the prompt's "first stage" is its embeddings
        self.prompt_passes += 1
        return super().encode(input_ids, attention_mask)


class PeftClassifier(torch.nn.Module):
    """A PEFT model scored like the verbalizer: label words at the last position only."""

    def __init__(self, backbone, peft_config, word_ids):
        super().__init__()
        self.model = get_peft_model(backbone.model, peft_config)
        self.word_ids = word_ids

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1)
        return out.logits[:, -1, self.word_ids]


def wording_of(tokenizer, k: int) -> str:
    ids = tokenizer((SENTENCE * 8), add_special_tokens=False)["input_ids"][:k]
    text = tokenizer.decode(ids)
    assert len(tokenizer(text)["input_ids"]) == k, "pick a sentence that re-tokenizes to the same k"
    return text


def build(name: str, k: int):
    backbone = load_backbone(BackboneConfig(name="smollm2-135m"))
    tok = backbone.tokenizer
    cfg = MethodConfig(
        kind="sk_prefix",
        wording=wording_of(tok, k),
        prefix_length=M,
        adapter_rank=8,
        head="verbalizer",
        label_words=WORDS,
    )
    word_ids = [tok(WORDS[n], add_special_tokens=False)["input_ids"][0] for n in LABELS]
    makers = {
        "sk_prefix_cached": lambda: SKPrefix(backbone, cfg, LABELS),
        "sk_prefix_rerun": lambda: SKPrefixRerun(backbone, cfg, LABELS),
        "sk_prompt_cached": lambda: SKPrompt(backbone, cfg, LABELS),
        "sk_prompt_rerun": lambda: SKPromptRerun(backbone, cfg, LABELS),
        "peft_prefix": lambda: PeftClassifier(
            backbone, PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=M), word_ids
        ),
        "peft_prompt": lambda: PeftClassifier(
            backbone, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=M), word_ids
        ),
    }
    model = makers[name]()
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def step(model, opt, ids, mask, labels) -> tuple[float, int]:
    """One optimizer step; returns seconds and the bytes autograd saved for backward."""
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(ids, mask).float(), labels)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start, saved[0]


def predicted(name: str, k: int, n: int) -> float:
    """Step cost relative to cached SK-Prefix from token counts: forward+backward is linear in tokens."""
    if name == "sk_prefix_rerun":
        return (n + k) / n  # the prompt's k tokens go through the model (with grad) every step
    if name.startswith("sk_prompt") or name == "peft_prompt":
        return (n + M) / n  # the m virtual tokens are real sequence positions
    return 1.0  # prefix positions only enter attention as keys/values


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = ["sk_prefix_cached", "sk_prefix_rerun", "sk_prompt_cached", "sk_prompt_rerun", "peft_prefix", "peft_prompt"]
    rows = []
    for k, n in SIZES:
        built = {name: build(name, k) for name in names}
        ids = torch.randint(1000, 20000, (BATCH, n))
        mask = torch.ones_like(ids)
        labels = torch.randint(0, 2, (BATCH,))
        times = {name: [] for name in names}
        memory = {}
        for name in names:  # warm-up
            step(*built[name], ids, mask, labels)
        for _ in range(args.repeats):
            for name in names:  # interleaved, so drift in machine speed hits every variant alike
                seconds, saved = step(*built[name], ids, mask, labels)
                times[name].append(seconds)
                memory[name] = saved
        base = statistics.median(times["sk_prefix_cached"])
        for name in names:
            med = statistics.median(times[name])
            trainable = sum(p.numel() for p in built[name][0].parameters() if p.requires_grad)
            rows.append(
                {
                    "k": k,
                    "n": n,
                    "variant": name,
                    "trainable": trainable,
                    "median_step_s": med,
                    "vs_sk_prefix_cached": med / base,
                    "predicted": predicted(name, k, n),
                    "autograd_saved_mb": memory[name] / 2**20,
                }
            )
        del built
    table = pd.DataFrame(rows)
    print(f"SmolLM2-135M, batch {BATCH}, m = {M}, {args.repeats} interleaved repeats, {args.threads} threads\n")
    print(table.to_markdown(index=False, floatfmt=".3g"))
    pivot = table.pivot_table(index=["k", "n"], columns="variant", values="median_step_s")
    print("\nTargets:")
    print(
        (pivot["sk_prefix_cached"] / pivot["peft_prefix"])
        .rename("cached SK-Prefix / PEFT prefix (target <= 1.10)")
        .to_markdown(floatfmt=".3f")
    )
    print(
        (pivot["sk_prefix_rerun"] / pivot["sk_prefix_cached"])
        .rename("re-run / cached SK-Prefix (target >= 1.2 at k=16, n=64)")
        .to_markdown(floatfmt=".3f")
    )


if __name__ == "__main__":
    main()
