"""SK-Prefix and SK-Prompt on tiny config-built backbones: step-0 zero-shot, gradients, the prompt cache."""

import pytest
import torch
import torch.nn.functional as F

from skray.config import MethodConfig
from skray.errors import ConfigError
from skray.methods import build_model

WORDING = "classify the sentiment of the review as positive or negative"
LABELS = ["neg", "pos"]
WORDS = {"neg": " negative", "pos": " positive"}
TEXTS = ["a wonderful moving film", "dull and far too long to sit through"]


def method(kind, backbone, m=None, head="verbalizer"):
    k = len(backbone.tokenizer(WORDING)["input_ids"])
    cfg = MethodConfig(kind=kind, wording=WORDING, prefix_length=m or k, adapter_rank=4, head=head, label_words=WORDS)
    return build_model(backbone, cfg, LABELS), k


def batch(backbone, special):
    enc = backbone.tokenizer(TEXTS, add_special_tokens=special, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def scores_read_as_text(decoder) -> torch.Tensor:
    """The label words' scores of the plain model reading the wording, then each text, as text."""
    tok = decoder.tokenizer
    word_ids = [tok(WORDS[n], add_special_tokens=False)["input_ids"][0] for n in LABELS]
    want = []
    with torch.no_grad():
        for text in TEXTS:
            full = torch.tensor([tok(WORDING)["input_ids"] + tok(text, add_special_tokens=False)["input_ids"]])
            want.append(decoder.model(input_ids=full).logits[0, -1, word_ids])
    return torch.stack(want)


@pytest.mark.parametrize("kind", ["sk_prefix", "sk_prompt"])
def test_step0_equals_reading_prompt_as_text(decoder, kind):
    model, _ = method(kind, decoder)
    with torch.no_grad():
        got = model(*batch(decoder, special=False))
    torch.testing.assert_close(got, scores_read_as_text(decoder), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["sk_prefix", "sk_prompt"])
@pytest.mark.parametrize(("which", "head"), [("decoder", "verbalizer"), ("decoder", "linear"), ("encoder", "linear")])
def test_only_adapter_and_head_get_gradients(request, kind, which, head):
    backbone = request.getfixturevalue(which)
    model, _ = method(kind, backbone, m=5, head=head)
    ids, mask = batch(backbone, special=which == "encoder")
    F.cross_entropy(model(ids, mask), torch.tensor([1, 0])).backward()
    with_grad = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == ({"adapters"} if kind == "sk_prefix" else {"adapter"}) | (
        {"head"} if head == "linear" else set()
    )
    assert all(p.grad is None for p in backbone.model.parameters())
    for name, p in model.named_parameters():
        if p.requires_grad and ".down" not in name:  # `down` gets no gradient while `up` is still zero
            assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", ["sk_prefix", "sk_prompt"])
def test_prompt_pass_runs_once_not_per_step(decoder, kind):
    """Count real backbone calls on the prompt's tokens across construction and ten training steps."""
    seen = []
    prompt_ids = decoder.tokenizer(WORDING, return_tensors="pt")["input_ids"]
    embeddings = decoder.model.get_input_embeddings()  # every pass over the prompt starts here
    embeddings.register_forward_pre_hook(
        lambda module, args: seen.append(1) if torch.equal(args[0], prompt_ids) else None
    )
    model, _ = method(kind, decoder, m=4)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids, mask = batch(decoder, special=False)
    for _ in range(10):
        F.cross_entropy(model(ids, mask), torch.tensor([1, 0])).backward()
        opt.step()
        opt.zero_grad()
    assert len(seen) == 1
    assert model.prompt_passes == 1


def test_trainable_parameters_are_counted_exactly(decoder):
    model, k = method("sk_prefix", decoder, m=6)
    kv_dim = 2 * 8  # 2 kv heads x head_dim 8
    per_layer = 6 * k + 2 * (2 * kv_dim * 4)
    assert model.num_trainable() == 2 * per_layer
    assert all(n.startswith("adapters.") for n, p in model.named_parameters() if p.requires_grad)


def test_encoder_with_prefix_runs_and_verbalizer_is_refused(encoder):
    model, _ = method("sk_prefix", encoder, m=3, head="linear")
    ids, mask = batch(encoder, special=True)
    assert model(ids, mask).shape == (2, 2)
    with pytest.raises(ConfigError, match="verbalizer"):
        method("sk_prompt", encoder, head="verbalizer")


def test_label_words_must_differ(decoder):
    cfg = MethodConfig(wording=WORDING, label_words={"neg": " good", "pos": " good"})
    with pytest.raises(ConfigError, match="label_words"):
        build_model(decoder, cfg, LABELS)


@pytest.mark.parametrize("m_less", [True, False])
def test_sk_prefix_input_positions_start_after_the_prompt(decoder, m_less):
    """The prompt's keys carry positions 0..k-1; the input goes on at k for any prefix length m."""
    k = len(decoder.tokenizer(WORDING)["input_ids"])
    model, _ = method("sk_prefix", decoder, m=k - 3 if m_less else k + 3)
    seen = []
    model.backbone.base_model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs.get("position_ids")), with_kwargs=True
    )
    ids, mask = batch(decoder, special=False)
    with torch.no_grad():
        model(ids, mask)
    (positions,) = seen
    assert torch.equal(positions, torch.arange(k, k + ids.size(1)).expand(ids.size(0), -1))


def test_default_label_words_that_collide_are_explained(decoder):
    """Unset label_words default to a space plus each label; labels whose words share a first token
    (numbers on many tokenizers, or these) get an error that says where the words came from."""
    with pytest.raises(ConfigError, match=r"by default a space plus the label .* set method.label_words"):
        build_model(decoder, MethodConfig(wording=WORDING), ["very bad", "very good"])
