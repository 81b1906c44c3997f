"""Every method of the registry: builds, trains a few steps, and comes back from its checkpoint."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from skray.backbones import load_backbone
from skray.config import BackboneConfig, MethodConfig
from skray.errors import ConfigError
from skray.methods import METHODS, build_model
from skray.train.checkpoint import load_trained, save_checkpoint

LABELS = ["neg", "pos"]
WORDS = {"neg": " negative", "pos": " positive"}
TEXTS = ["a wonderful moving film", "dull and far too long", "great fun", "a tedious mess"]


def config(kind, head):
    return MethodConfig(
        kind=kind,
        wording="is the review positive or negative?",
        prefix_length=3,
        adapter_rank=2,
        head=head,
        label_words=WORDS,
    )


@pytest.mark.parametrize("kind", list(METHODS))
def test_each_method_trains_and_round_trips_its_checkpoint(tiny_llama_dir, tmp_path, kind):
    head = "linear" if kind == "linear_probe" else "verbalizer"
    cfg = config(kind, head)
    backbone = load_backbone(BackboneConfig(name=tiny_llama_dir))
    frozen = {n: p.clone() for n, p in backbone.model.named_parameters()}
    model = build_model(backbone, cfg, LABELS)
    enc = AutoTokenizer.from_pretrained(tiny_llama_dir)(TEXTS, padding=True, return_tensors="pt")
    labels = torch.tensor([1, 0, 1, 0])
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert model.num_trainable() == sum(p.numel() for p in trainable.values())
    opt = torch.optim.AdamW(trainable.values(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    for _ in range(3):
        F.cross_entropy(model(enc["input_ids"], enc["attention_mask"]), labels).backward()
        opt.step()
        opt.zero_grad()
    assert any(not torch.equal(before[n], p) for n, p in trainable.items())  # something trained
    if kind != "full_finetune":  # only full fine-tuning may move backbone weights
        for n, p in model.backbone.named_parameters():
            if n in frozen:
                assert torch.equal(p, frozen[n]), n

    state = {n: p.detach().float() for n, p in trainable.items()}
    save_checkpoint(tmp_path, state, {"backbone": tiny_llama_dir, "method": cfg.model_dump(), "label_names": LABELS})
    back, _ = load_trained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(
            back(enc["input_ids"], enc["attention_mask"]), model.eval()(enc["input_ids"], enc["attention_mask"])
        )


def test_text_init_prompt_tuning_starts_from_the_wording(decoder):
    model = build_model(decoder, config("prompt_tuning_text", "verbalizer"), LABELS)
    ids = decoder.tokenizer("is the review positive or negative?")["input_ids"][
        :3
    ]  # as SK reads it: with special tokens
    start = model.peft.prompt_encoder["default"].embedding.weight
    torch.testing.assert_close(start, decoder.model.get_input_embeddings().weight[ids])


def test_lora_with_modules_the_model_lacks_is_a_config_error(decoder):
    cfg = config("lora", "verbalizer").model_copy(update={"lora_target_modules": ["not_a_layer"]})
    with pytest.raises(ConfigError, match="method.kind lora: .*not_a_layer"):
        build_model(decoder, cfg, LABELS)


def test_token_level_models_score_every_position(decoder, encoder):
    for backbone, head in ((decoder, "linear"), (encoder, "linear")):
        for kind in ("sk_prefix", "sk_prompt", "prefix_tuning", "lora"):
            model = build_model(backbone, config(kind, head), ["B-X", "I-X", "O"], token_level=True)
            enc = backbone.tokenizer(TEXTS, padding=True, return_tensors="pt")
            assert model(enc["input_ids"], enc["attention_mask"]).shape == (*enc["input_ids"].shape, 3)
