"""The real SmolLM2-135M-Instruct: conversion from the embedded GGUF, safe when raced, zero-shot at step 0."""

import os
import subprocess
import sys

import pytest
import torch

from skray.backbones import load_backbone
from skray.config import BackboneConfig, MethodConfig
from skray.errors import BackboneError
from skray.methods import build_model

pytestmark = pytest.mark.slow

WORDING = "Classify the sentiment of the movie review as positive or negative."


def test_two_processes_converting_at_once_share_one_result(tmp_path):
    """Two workers asking for the backbone on a fresh cache: one converts, both load the same folder."""
    code = "from skray.backbones import resolve; print(resolve('smollm2-135m'))"
    env = {**os.environ, "SKRAY_CACHE": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] == str(tmp_path / "smollm2-135m")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        "smollm2-135m"
    ]  # no half-written leftovers
    assert (tmp_path / "smollm2-135m" / "model.safetensors").stat().st_size > 500e6


def test_real_smollm2_sk_prefix_step0_is_zero_shot():
    bb = load_backbone(BackboneConfig(name="smollm2-135m"))
    assert type(bb.model).__name__ == "LlamaForCausalLM"
    assert bb.is_decoder
    assert bb.model.config.num_hidden_layers == 30
    assert bb.model.config.hidden_size == 576
    tok = bb.tokenizer
    k = len(tok(WORDING)["input_ids"])
    cfg = MethodConfig(
        kind="sk_prefix", wording=WORDING, prefix_length=k, label_words={"rotten": " negative", "fresh": " positive"}
    )
    model = build_model(bb, cfg, ["rotten", "fresh"])
    texts = ["\nReview: A wonderful, moving film.\nSentiment:", "\nReview: Dull and far too long.\nSentiment:"]
    enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    ids = [tok(w, add_special_tokens=False)["input_ids"][0] for w in (" negative", " positive")]
    with torch.no_grad():
        got = model(enc["input_ids"], enc["attention_mask"])
        want = torch.stack([bb.model(**tok(WORDING + t, return_tensors="pt")).logits[0, -1, ids] for t in texts])
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
    assert got.argmax(-1).tolist() == [1, 0]  # the real model already reads the prompt: zero-shot works
    assert model.num_trainable() / bb.num_parameters < 0.01


def test_unknown_backbone_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    # Offline as a user's HF_HUB_OFFLINE=1 makes it. The hub library reads the variable once, when first
    # imported (here: before this test): setting only the variable, the lookup tried the network (23 s here).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BackboneError, match="not an embedded name"):
        load_backbone(BackboneConfig(name="no-such-org/no-such-model"))
