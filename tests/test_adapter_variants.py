"""The adapter variants (mixer, linear, mlp, free) and the authors' mean_linear head on tiny backbones.

Trainable parameters, per the README's "Adapter variants" (d width, L layers, D = kv heads x head_dim,
h = head_dim, r = adapter_rank, C labels; a linear or mean_linear head adds d*C + C):
  sk_prompt: mixer m*k + 2*d*r; linear d^2; mlp 2*d*r + r + d; free k*d
  sk_prefix: mixer L*(m*k + 4*D*r); linear h^2; mlp 2*L*(2*D*r + r + D); free k*d
"""

import pytest
import torch
import torch.nn.functional as F

from skray.config import MethodConfig, parse_config
from skray.errors import ConfigError
from skray.methods import build_model
from skray.methods.heads import LinearHead, MeanLinearHead
from tests.test_methods import LABELS, TEXTS, WORDING, WORDS, scores_read_as_text

ADAPTERS = ["mixer", "linear", "mlp", "free"]
KINDS = ["sk_prompt", "sk_prefix"]
RANK = 4
# the tiny Llama of tests/conftest.py: width 32, 2 layers, 2 kv heads of 8 dims
D_MODEL, LAYERS, KV_DIM, HEAD_DIM = 32, 2, 16, 8


def prompt_tokens(backbone) -> int:
    return len(backbone.tokenizer(WORDING)["input_ids"])


def build(kind, adapter, backbone, m=None, head="verbalizer", token_level=False):
    cfg = MethodConfig(
        kind=kind,
        adapter=adapter,
        wording=WORDING,
        prefix_length=m or prompt_tokens(backbone),
        adapter_rank=RANK,
        head=head,
        label_words=WORDS,
    )
    return build_model(backbone, cfg, LABELS, token_level)


def batch(backbone, special=False):
    enc = backbone.tokenizer(TEXTS, add_special_tokens=special, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def expected_trainable(kind: str, adapter: str, k: int, m: int) -> int:
    d, L, D, h, r = D_MODEL, LAYERS, KV_DIM, HEAD_DIM, RANK  # noqa: N806 (the README's symbols)
    counts = {
        ("sk_prompt", "mixer"): m * k + 2 * d * r,
        ("sk_prompt", "linear"): d * d,
        ("sk_prompt", "mlp"): 2 * d * r + r + d,
        ("sk_prompt", "free"): k * d,
        ("sk_prefix", "mixer"): L * (m * k + 4 * D * r),
        ("sk_prefix", "linear"): h * h,
        ("sk_prefix", "mlp"): 2 * L * (2 * D * r + r + D),
        ("sk_prefix", "free"): k * d,
    }
    return counts[kind, adapter]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("kind", KINDS)
def test_step0_equals_reading_the_wording_as_text(decoder, kind, adapter):
    """Every variant starts at the identity (m = k): step 0 is the model reading the wording, then the input."""
    model = build(kind, adapter, decoder)
    with torch.no_grad():
        got = model(*batch(decoder))
    torch.testing.assert_close(got, scores_read_as_text(decoder), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", ["decoder", "encoder"])
def test_shapes_and_only_adapter_and_head_train(request, which, kind, adapter):
    backbone = request.getfixturevalue(which)
    model = build(kind, adapter, backbone, head="linear")
    ids, mask = batch(backbone, special=which == "encoder")
    logits = model(ids, mask)
    assert logits.shape == (2, 2)
    F.cross_entropy(logits, torch.tensor([1, 0])).backward()
    trained = {"sk_prompt": "prompt_states", "sk_prefix": "prompt_embeds"}[kind] if adapter == "free" else None
    trained = trained or {"sk_prompt": "adapter", "sk_prefix": "adapters"}[kind]
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {trained, "head"}
    assert all(p.grad is None for p in backbone.model.parameters())
    for name, p in model.named_parameters():
        if p.requires_grad and ".down" not in name:  # `down` gets no gradient while `up` is still zero
            assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("kind", KINDS)
def test_trainable_parameters_follow_the_formula(decoder, kind, adapter):
    k = prompt_tokens(decoder)
    m = 6 if adapter == "mixer" else k
    assert build(kind, adapter, decoder, m=m).num_trainable() == expected_trainable(kind, adapter, k, m)
    head = 2 * D_MODEL + 2
    assert build(kind, adapter, decoder, m=m, head="mean_linear").num_trainable() == (
        expected_trainable(kind, adapter, k, m) + head
    )


@pytest.mark.parametrize("adapter", ["linear", "mlp", "free"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_prefix_length_other_than_k_is_refused(decoder, kind, adapter):
    k = prompt_tokens(decoder)
    with pytest.raises(ConfigError, match=rf"keeps the wording's {k} tokens .* set prefix_length: {k}"):
        build(kind, adapter, decoder, m=k + 1)


def test_free_sk_prefix_reruns_the_prompt_every_forward(decoder):
    """The authors' SK-Prefix: the trainable embeddings go through the frozen model on each forward,
    and ``prompt_passes`` says so (1 at build, the embedding lookup, then one per forward)."""
    k = prompt_tokens(decoder)
    model = build("sk_prefix", "free", decoder)
    reads = []
    model.backbone.base_model.register_forward_pre_hook(
        lambda mod, args, kwargs: (
            reads.append(1)
            if kwargs.get("inputs_embeds") is not None and kwargs["inputs_embeds"].shape[1] == k
            else None
        ),
        with_kwargs=True,
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids, mask = batch(decoder)
    before = model(ids, mask).detach()
    for _ in range(3):
        F.cross_entropy(model(ids, mask), torch.tensor([1, 0])).backward()
        opt.step()
        opt.zero_grad()
    assert len(reads) == 4
    assert model.prompt_passes == 1 + 4
    assert not torch.allclose(model(ids, mask), before)  # the trained embeddings changed the prefix


def test_free_sk_prompt_reads_the_prompt_once(decoder):
    model = build("sk_prompt", "free", decoder)
    ids, mask = batch(decoder)
    F.cross_entropy(model(ids, mask), torch.tensor([1, 0])).backward()
    assert model.prompt_passes == 1
    assert model.prompt_states.grad.abs().sum() > 0


def test_mean_linear_head_averages_every_position_padding_included():
    torch.manual_seed(0)
    head = MeanLinearHead(8, 3)
    hidden = torch.randn(2, 6, 8)
    per_position = head.proj(hidden)  # (2, 6, 3): the layer at every position
    torch.testing.assert_close(head(hidden), per_position.mean(1))
    padded = hidden.clone()
    padded[0, 3:] = 5.0  # what sits in (would-be) padded positions moves the result
    assert not torch.allclose(head(padded)[0], head(hidden)[0])
    torch.testing.assert_close(head(padded)[1], head(hidden)[1])


@pytest.mark.parametrize("kind", KINDS)
def test_mean_linear_counts_padding_in_the_model(decoder, kind):
    """A row batched with a longer one gets padding; masked pooling would ignore it, mean_linear does not."""
    model = build(kind, "mixer", decoder, m=5, head="mean_linear")
    assert isinstance(model.head, MeanLinearHead)
    ids, mask = batch(decoder)
    with torch.no_grad():
        batched = model(ids, mask)
        short = 0 if mask[0].sum() < mask[1].sum() else 1
        real = int(mask[short].sum())
        alone = model(ids[short : short + 1, :real], mask[short : short + 1, :real])
        hidden = model.encode(ids, mask)
    assert batched.shape == (2, 2)
    assert mask[short].sum() < mask.shape[1]  # the row is padded in the batch
    torch.testing.assert_close(batched, model.head.proj(hidden).mean(1))
    assert not torch.allclose(batched[short], alone[0], atol=1e-6)


def test_mean_linear_scores_every_token_for_token_classification(decoder):
    model = build("sk_prefix", "mixer", decoder, m=5, head="mean_linear", token_level=True)
    assert type(model.head) is LinearHead
    ids, mask = batch(decoder)
    assert model(ids, mask).shape == (*ids.shape, 2)


def test_config_accepts_the_variants():
    assert MethodConfig().adapter == "mixer"
    assert MethodConfig(kind="linear_probe", head="mean_linear").head == "mean_linear"
    with pytest.raises(ValueError, match="linear, mean_linear or word_linear"):
        MethodConfig(kind="linear_probe", head="verbalizer")
    cfg = parse_config({"data": {"task": "token_classification"}, "method": {"head": "mean_linear", "adapter": "free"}})
    assert (cfg.method.head, cfg.method.adapter) == ("mean_linear", "free")


def test_free_sk_prefix_and_free_sk_prompt_are_one_function_on_a_causal_decoder(decoder):
    """The authors' two designs: prefix keys/values computed by the frozen model from the trainable
    embeddings are exactly the keys/values those embeddings get when prepended in the sequence (causal
    attention: the prompt never sees the input). Same start, same gradients, same training; the
    verdict's free rows agree to the last digit (docs/RESULTS.md)."""
    torch.manual_seed(0)
    prefix, prompt = build("sk_prefix", "free", decoder), build("sk_prompt", "free", decoder)
    ids, mask = batch(decoder)
    start = prefix(ids, mask).detach()
    torch.testing.assert_close(start, prompt(ids, mask))
    for model in (prefix, prompt):
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        for _ in range(3):
            F.cross_entropy(model(ids, mask), torch.tensor([1, 0])).backward()
            opt.step()
            opt.zero_grad()
    assert not torch.allclose(prefix(ids, mask), start)  # trained
    torch.testing.assert_close(prefix(ids, mask), prompt(ids, mask))
    torch.testing.assert_close(
        prefix.prompt_embeds.detach(), prompt.prompt_states.detach().view_as(prefix.prompt_embeds)
    )
