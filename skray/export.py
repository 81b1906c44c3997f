"""`skray export --format peft`: a checkpoint's adapter as a plain PEFT adapter, usable without skray.

Once training ends the adapted prompt is a constant: SK-Prompt's m virtual-token embeddings are a
PEFT prompt-tuning adapter; SK-Prefix's per-layer keys and values are a PEFT prefix-tuning adapter
(``prefix_projection`` off, so its embedding *is* the prefix). The PEFT baselines (LoRA, prompt and
prefix tuning, P-tuning) are PEFT adapters already, trained on the backbone's base model: they are
re-wrapped for the head's model (a verbalizer reads the LM head), so a mixed search's best exports
whatever its kind. PEFT builds and saves the adapter itself, so its layout is PEFT's own; the export
then checks that PEFT's scores equal skray's.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
from peft import (
    PeftConfig,
    PeftModel,
    PeftType,
    PrefixTuningConfig,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from safetensors.torch import save_file

from skray.errors import ConfigError
from skray.methods.heads import pool
from skray.methods.sk_prefix import flatten_heads
from skray.predict import find_checkpoint, load_model, tokenizer_of
from skray.train.checkpoint import META

SK_KINDS = ("sk_prompt", "sk_prefix")
PEFT_KINDS = ("prompt_tuning", "prompt_tuning_text", "prefix_tuning", "p_tuning", "lora")
# kinds whose virtual tokens are sequence positions, returned in the output before the input's
IN_SEQUENCE = ("sk_prompt", "prompt_tuning", "prompt_tuning_text", "p_tuning")
# The export's own check: max abs score difference per unit of the largest score, by the run's precision
# (the model loads in it). fp32 noise: ~1e-6. bf16/fp16 round every layer, and PEFT's path rounds other
# tensors than skray's: SmolLM2 SK-Prefix with rotated keys measured 0.018 (bf16) and 0.0027 (fp16), and
# keys left unrotated are off by about 0.5.
TOLERANCE = {"fp32": 1e-4, "bf16": 0.1, "fp16": 0.02}
PROBE = {"text": "This is an example.", "text_pair": "This is another one."}


def prefix_embedding(model: torch.nn.Module) -> torch.Tensor:
    """SK-Prefix's keys and values in PEFT's layout: (m, layers * 2 * kv_heads * head_dim), each row
    [K_0, V_0, K_1, V_1, ...] with heads outermost inside K_l and V_l (PEFT views it as (m, 2L, heads,
    head_dim) and takes K_l = 2l, V_l = 2l + 1). Grouped key/value heads stay grouped: PEFT sizes the
    prefix by num_key_value_heads, as the cache holds it.

    PEFT starts the input's positions at m (after the prefix); skray at k, after the prompt the keys
    came from. With rotary positions only the distance between query and key counts, so rotating the
    keys by m - k gives the same scores; with absolute positions that needs m == k."""
    m, k = model.prefix_length, model.prompt_tokens
    layers = []
    for keys, values in model.prefix_kv():  # every adapter variant's keys and values, (1, heads, m, head_dim)
        layers += [_shift(model, flatten_heads(keys), m - k), flatten_heads(values)]
    return torch.cat(layers, dim=1)


def _shift(model: torch.nn.Module, keys: torch.Tensor, delta: int) -> torch.Tensor:
    """Keys (m, heads * head_dim) rotated by ``delta`` positions with the backbone's own rotary code."""
    if delta == 0:
        return keys
    base = model.backbone.base_model
    rotary = getattr(base, "rotary_emb", None)
    apply = getattr(sys.modules[type(base).__module__], "apply_rotary_pos_emb", None)
    if rotary is None or apply is None:
        raise ConfigError(
            f"PEFT prefix tuning cannot express this checkpoint exactly: PEFT places the input after the "
            f"{model.prefix_length} prefix positions, skray after the wording's {model.prompt_tokens} tokens, and "
            f"{type(base).__name__} has no rotary positions to shift the keys by; train with method.prefix_length "
            f"{model.prompt_tokens} to export it"
        )
    heads = keys.view(keys.size(0), model.kv_heads, model.head_dim).transpose(0, 1).unsqueeze(0)
    cos, sin = rotary(heads, torch.tensor([[delta]], device=keys.device))
    _, shifted = apply(heads, heads, cos, sin)
    return shifted[0].transpose(0, 1).reshape(keys.shape)


def task_type(verbalizer: bool) -> TaskType:
    """Causal LM for a verbalizer head (it scores label words with the LM head); feature extraction
    (hidden states out, on ``AutoModel``) for a linear head."""
    return TaskType.CAUSAL_LM if verbalizer else TaskType.FEATURE_EXTRACTION


def peft_config(model: torch.nn.Module, kind: str, verbalizer: bool) -> PeftConfig:
    """SK-Tuning's adapted prompt as the PEFT adapter that holds it."""
    task = task_type(verbalizer)
    if kind == "sk_prompt":
        return PromptTuningConfig(task_type=task, num_virtual_tokens=model.prefix_length)
    return PrefixTuningConfig(task_type=task, num_virtual_tokens=model.prefix_length, prefix_projection=False)


def head_info(model: torch.nn.Module, meta: dict, kind: str, tokenizer) -> dict:
    """What a user needs beside the adapter to get label scores (written as head.json)."""
    from skray.config import MethodConfig
    from skray.methods.base import verbalizer_token_ids

    method = MethodConfig(**meta["method"])
    info = {
        "labels": meta["label_names"],
        "head": method.head,
        "virtual_positions_in_output": model.prefix_length if kind in IN_SEQUENCE else 0,
        "template": meta.get("template"),
        "max_length": meta.get("max_length"),
        "add_special_tokens": not model.is_decoder,
    }
    if method.head == "verbalizer":
        words = method.label_words or {n: " " + n for n in meta["label_names"]}
        info["label_words"] = [words[n] for n in meta["label_names"]]
        info["label_token_ids"] = verbalizer_token_ids(method, True, tokenizer, meta["label_names"])
    else:
        info["pooling"] = (
            "per_token"
            if model.token_level
            else "all_positions"  # mean_linear: the mean over every position, padding included
            if method.head == "mean_linear"
            else "last_token"
            if model.is_decoder
            else "mean"
        )
    return info


def peft_scores(
    peft: PeftModel, info: dict, head: torch.nn.Module | None, ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Label scores the way the exported README says: a verbalizer takes the label words' logits at the
    last real token; a linear head reads the pooled last hidden state (every position's, for tags)."""
    out = peft(input_ids=ids, attention_mask=mask)
    drop = info["virtual_positions_in_output"]
    if info["head"] == "verbalizer":
        return pool(out.logits[:, drop:], mask, last_token=True)[:, info["label_token_ids"]]
    hidden = out.last_hidden_state[:, drop:].float()  # the README's fp32 model (a bf16 run's model loads in bf16)
    if info["pooling"] == "per_token":
        return head(hidden)
    if info["pooling"] == "all_positions":
        return head(hidden.mean(1))
    return head(pool(hidden, mask, last_token=info["pooling"] == "last_token"))


def export_peft(source: str, out: str) -> Path:
    """Write the checkpoint (or a run's best) as a PEFT adapter in ``out``, after checking that PEFT
    scores a probe as skray does; returns ``out``."""
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not an empty folder; name a new one")
    checkpoint = find_checkpoint(source)
    kind = json.loads((checkpoint / META).read_text())["method"]["kind"]
    if kind not in SK_KINDS + PEFT_KINDS:
        raise ConfigError(
            f"{checkpoint}: --format peft exports adapters; method.kind {kind} trains none "
            f"({'the backbone itself' if kind == 'full_finetune' else 'only a head'})"
        )
    model, meta = load_model(checkpoint)
    tokenizer = tokenizer_of(meta)
    info = head_info(model, meta, kind, tokenizer)
    ids, mask = _probe(info, tokenizer)
    with torch.no_grad():
        want = model(ids, mask)  # before a LoRA baseline's layers leave the backbone (_baseline_adapter)
    proj = getattr(model.head, "proj", None)  # the bare layer in fp32, as the README applies it (verbalizer: none)
    linear = None if proj is None else copy.deepcopy(proj).float()
    verbalizer = info["head"] == "verbalizer"
    peft = (_sk_adapter if kind in SK_KINDS else _baseline_adapter)(model, kind, verbalizer, checkpoint)
    diff = _check(want, peft, info, linear, ids, mask, meta.get("precision", "fp32"))
    peft.save_pretrained(target)  # PEFT writes a model card as README.md; ours replaces it below
    if linear is not None:
        save_file({k: v.contiguous() for k, v in linear.state_dict().items()}, target / "head.safetensors")
    (target / "head.json").write_text(json.dumps(info, indent=2))
    peft_type = peft.peft_config["default"].peft_type
    (target / "README.md").write_text(readme(info, meta["backbone"], kind, peft_type))
    print(f"skray: exported {checkpoint}; PEFT's scores are skray's within {diff:.1g}", file=sys.stderr)
    return target


def _sk_adapter(model: torch.nn.Module, kind: str, verbalizer: bool, checkpoint: Path) -> PeftModel:
    """SK-Tuning's adapted prompt, computed once, as the embedding of a new PEFT adapter."""
    with torch.no_grad():
        weight = model.adapter(model.prompt_states) if kind == "sk_prompt" else prefix_embedding(model)
    base = model.backbone if verbalizer else model.backbone.base_model
    peft = get_peft_model(base, peft_config(model, kind, verbalizer)).eval()
    embedding = peft.prompt_encoder["default"].embedding.weight
    if embedding.shape != weight.shape:
        raise ConfigError(
            f"{checkpoint}: PEFT sizes this backbone's adapter as {tuple(embedding.shape)}, skray's is "
            f"{tuple(weight.shape)}; PEFT cannot hold it"
        )
    with torch.no_grad():
        embedding.copy_(weight)
    return peft


def _baseline_adapter(model: torch.nn.Module, kind: str, verbalizer: bool, checkpoint: Path) -> PeftModel:
    """A PEFT baseline's trained adapter on the model its head reads: the base model (hidden states,
    as it trained) for a linear head, the causal LM for a verbalizer. PEFT's own state dict carries it
    across: a prompt learner's final embeddings (P-tuning's encoder output), LoRA's matrices with their
    module paths moved under the LM's base model prefix. LoRA's layers are taken out of the backbone
    first (``unload``), since wrapping the LM injects its own."""
    trained = model.peft
    state = get_peft_model_state_dict(trained)
    config = copy.deepcopy(trained.peft_config["default"])
    config.task_type, config.inference_mode = task_type(verbalizer), True  # inference: the embeddings as saved
    if isinstance(config, PromptTuningConfig):
        config.prompt_tuning_init = PromptTuningInit.RANDOM  # the weights are loaded; no tokenizer to start from
    if config.peft_type == PeftType.LORA:
        trained.unload()
        if verbalizer:
            inner = f"base_model.model.{model.backbone.base_model_prefix}."
            state = {inner + k.removeprefix("base_model.model."): v for k, v in state.items()}
    peft = get_peft_model(model.backbone if verbalizer else model.backbone.base_model, config)
    unexpected = set_peft_model_state_dict(peft, state).unexpected_keys
    if unexpected and not config.is_prompt_learning:  # a prompt learner's embedding loads apart from these
        raise ConfigError(f"{checkpoint}: PEFT's {kind} adapter on this backbone has no place for {unexpected[:3]}")
    return peft.eval()


def _probe(info: dict, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """A two-row probe batch through the checkpoint's template (a pair row and a single one)."""
    from skray.data.collate import render

    rows = [render(info["template"], PROBE)[0], PROBE["text"]]
    enc = tokenizer(rows, add_special_tokens=info["add_special_tokens"], padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@torch.no_grad()
def _check(
    want: torch.Tensor,
    peft: PeftModel,
    info: dict,
    linear: torch.nn.Module | None,
    ids: torch.Tensor,
    mask: torch.Tensor,
    precision: str,
) -> float:
    """PEFT's scores of the probe against skray's (``want``); an architecture whose PEFT forward differs
    from skray's (other positions, another cache layout) is refused rather than exported wrong.
    Returns the difference."""
    got = peft_scores(peft, info, linear, ids, mask)
    diff = float((got - want).abs().max())
    if diff > TOLERANCE[precision] * max(1.0, float(want.abs().max())):
        raise ConfigError(
            f"PEFT scores this adapter differently from skray (max abs diff {diff:.2g} on a probe); "
            f"{type(peft.get_base_model()).__name__} cannot be exported exactly"
        )
    return diff


def readme(info: dict, backbone: str, kind: str, peft_type: PeftType) -> str:
    """How to get label scores with transformers and PEFT alone."""
    auto = "AutoModelForCausalLM" if info["head"] == "verbalizer" else "AutoModel"
    drop = info["virtual_positions_in_output"]
    cut = f"[:, {drop}:]" if drop else ""  # prompt tuning returns its virtual positions too
    if info["head"] == "verbalizer":
        words = dict(zip(info["labels"], info["label_words"], strict=True))
        score = [f"scores = out.logits{cut}[rows, last][:, {info['label_token_ids']}]"]
        about = f"The LM head scores the first token of each label's word at the last real token: {words}."
    else:
        hidden = f"out.last_hidden_state{cut}"
        pooled = {
            "last_token": f"{hidden}[rows, last]",
            "mean": f"({hidden} * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)",
            "per_token": hidden,
            "all_positions": f"{hidden}.mean(1)",
        }[info["pooling"]]
        score = [
            f"head = torch.nn.Linear(backbone.config.hidden_size, {len(info['labels'])})",
            'head.load_state_dict(load_file("THIS_FOLDER/head.safetensors"))',
            f"scores = head({pooled})",
        ]
        about = f"A linear head (head.safetensors) reads the last hidden state ({info['pooling']} pooling)."
    peft_kind = {PeftType.LORA: "LoRA", PeftType.P_TUNING: "P-tuning"}.get(
        peft_type, peft_type.value.lower().replace("_", "-")
    )
    return "\n".join(
        [
            f"# A PEFT {peft_kind} adapter exported by skray from a {kind} checkpoint",
            "",
            f"Backbone: `{backbone}`. Labels, in score order: {info['labels']}. {about}",
            f"Input: the template {info['template']!r} filled per row, at most {info['max_length']} tokens (skray "
            "cuts a longer row inside its text, never the template's end). BACKBONE_FOLDER: the backbone's "
            "Hugging Face folder (adapter_config.json's base_model_name_or_path here).",
            "",
            "```python",
            "import torch",
            "from peft import PeftModel",
            "from safetensors.torch import load_file",
            f"from transformers import AutoTokenizer, {auto}",
            "",
            f"backbone = {auto}.from_pretrained(BACKBONE_FOLDER)",
            'model = PeftModel.from_pretrained(backbone, "THIS_FOLDER").eval()',
            'tokenizer = AutoTokenizer.from_pretrained(BACKBONE_FOLDER, padding_side="right")',
            "tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token",
            f"enc = tokenizer(texts, add_special_tokens={info['add_special_tokens']}, padding=True, "
            'return_tensors="pt")  # texts: filled templates',
            'ids, mask = enc["input_ids"], enc["attention_mask"]',
            "out = model(input_ids=ids, attention_mask=mask)",
            "rows, last = torch.arange(len(ids)), mask.sum(1) - 1  # each row's last real token",
            *score,
            "```",
            "",
            "head.json holds the same as data (labels, words, token ids, pooling, template).",
            "",
        ]
    )
