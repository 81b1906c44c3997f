"""Adapter shapes for any k -> m, their identity start, and padding-free pooling."""

import pytest
import torch

from skray.methods.adapters import KVAdapter, PromptAdapter, resample_matrix
from skray.methods.heads import pool


@pytest.mark.parametrize(("k", "m"), [(1, 1), (5, 3), (13, 8), (8, 13), (16, 64), (64, 16)])
def test_adapter_shapes(k, m):
    states = torch.randn(k, 24)
    assert PromptAdapter(k, m, 24, rank=4)(states).shape == (m, 24)
    keys, values = KVAdapter(k, m, 24, rank=4)(states, states * 2)
    assert keys.shape == values.shape == (m, 24)
    w = resample_matrix(m, k)
    assert torch.allclose(w.sum(1), torch.ones(m))


def test_adapter_starts_as_identity_when_m_equals_k():
    states = torch.randn(7, 24)
    assert torch.equal(resample_matrix(7, 7), torch.eye(7))
    assert torch.allclose(PromptAdapter(7, 7, 24, rank=4)(states), states)


def test_resampling_averages_when_shrinking():
    states = torch.arange(4.0).unsqueeze(1)
    out = PromptAdapter(4, 2, 1, rank=1)(states)
    assert torch.allclose(out.squeeze(1), torch.tensor([0.5, 2.5]))


@pytest.mark.parametrize("last_token", [True, False])
def test_pooling_ignores_padding(last_token):
    hidden = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    before = pool(hidden, mask, last_token)
    hidden[0, 3:] = 1e6  # garbage in padded positions
    after = pool(hidden, mask, last_token)
    assert torch.allclose(before, after)
    expected = hidden[0, 2] if last_token else hidden[0, :3].mean(0)
    assert torch.allclose(after[0], expected)


LABELS, WORDS = ["rotten", "fresh"], {"rotten": " bad", "fresh": " good"}
TEMPLATE = "Review: {text}\nSentiment:"


def _model(decoder, kind: str, head: str, **method):
    from skray.config import MethodConfig
    from skray.methods import build_model

    torch.manual_seed(0)  # as a run seeds before building: the adapters start alike whatever the head
    cfg = MethodConfig(kind=kind, head=head, label_words=WORDS, prefix_length=3, adapter_rank=2, **method)
    return build_model(decoder, cfg, LABELS).eval()


def _batch(tokenizer, texts=("a wonderful moving film", "dull and far too long", "ok")):
    enc = tokenizer(
        [TEMPLATE.format(text=t) for t in texts], add_special_tokens=False, padding=True, return_tensors="pt"
    )
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("kind", ["sk_prefix", "sk_prompt", "lora"])
def test_word_linear_head_scores_exactly_as_the_verbalizer_at_step_0_and_then_trains(kind):
    """The label words' rows of the LM head as a trainable layer: identical logits (so argmax) at step 0,
    the SK adapter started from the same random numbers; then a step moves the head, not the LM head."""
    from skray.backbones import Backbone
    from skray.methods.heads import WordLinearHead
    from tests.conftest import minilm_tokenizer, tiny_llama

    tokenizer = minilm_tokenizer()
    ids, mask = _batch(tokenizer)
    verbalizer = _model(Backbone(tiny_llama(), tokenizer, True), kind, "verbalizer")
    model = _model(Backbone(tiny_llama(), tokenizer, True), kind, "word_linear")
    assert isinstance(model.head, WordLinearHead)
    with torch.no_grad():
        want, got = verbalizer(ids, mask), model(ids, mask)
    assert torch.equal(got, want)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"head.proj.weight", "head.proj.bias"} <= trainable
    assert trainable - {"head.proj.weight", "head.proj.bias"} == {
        n for n, p in verbalizer.named_parameters() if p.requires_grad
    }

    lm_head = model.backbone.get_output_embeddings().weight.clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    torch.nn.functional.cross_entropy(model(ids, mask), torch.tensor([1, 0, 1])).backward()
    optimizer.step()
    with torch.no_grad():
        assert not torch.allclose(model.head.proj.weight, verbalizer.head.rows)
        assert not torch.allclose(model(ids, mask), want)
    assert torch.equal(model.backbone.get_output_embeddings().weight, lm_head)  # the frozen LM head is untouched


def test_word_linear_head_scores_in_fp32_in_a_bf16_model(decoder):
    """Placed in bf16 as a bf16 run places it, it scores as the bf16 verbalizer does (the same bf16 rows,
    multiplied in fp32), and its scores are fp32."""
    from skray.devices import place

    tokenizer = decoder.tokenizer
    ids, mask = _batch(tokenizer)
    model = place(_model(decoder, "linear_probe", "word_linear"), torch.device("cpu"), torch.bfloat16, decoder.model)
    assert model.head.proj.weight.dtype == torch.bfloat16
    pooled = pool(model.encode(ids, mask), mask, last_token=True)
    with torch.no_grad():
        got = model.head(pooled)
    assert got.dtype == torch.float32
    rows = model.head.proj.weight.float()
    torch.testing.assert_close(got, pooled.float() @ rows.T + model.head.proj.bias.float(), atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["sk_prefix", "linear_probe"])
def test_calibration_makes_the_content_free_input_score_alike_for_every_label(decoder, kind):
    """Contextual calibration: "N/A" through the data template, scored through what the method trains,
    then scores equal across labels; other rows' scores move by the same per-label shift (the bias)."""
    from skray.config import DataConfig
    from skray.methods.base import content_free_input

    model = _model(decoder, kind, "word_linear", calibrate=True)
    free = content_free_input(decoder.tokenizer, DataConfig(template=TEMPLATE), add_special_tokens=False)
    assert decoder.tokenizer.decode(free["input_ids"][0]).endswith("n / a sentiment :")
    ids, mask = _batch(decoder.tokenizer)
    with torch.no_grad():
        before_free, before = model(free["input_ids"], free["attention_mask"])[0], model(ids, mask)
    assert (before_free[0] - before_free[1]).abs() > 1e-4  # something to calibrate away
    shift = model.calibrate(free["input_ids"], free["attention_mask"])
    with torch.no_grad():
        after_free, after = model(free["input_ids"], free["attention_mask"])[0], model(ids, mask)
    torch.testing.assert_close(after_free[0], after_free[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(after, before - shift, atol=1e-6, rtol=0)
    assert model.training is False  # left in the mode it was in


def test_calibrate_is_for_the_word_linear_head_and_word_heads_are_not_for_tags(decoder):
    from pydantic import ValidationError

    from skray.config import MethodConfig
    from skray.errors import ConfigError
    from skray.methods import build_model

    with pytest.raises(ValidationError, match="method.calibrate sets the trainable bias"):
        MethodConfig(head="verbalizer", calibrate=True)
    # Unset, calibration is on for word_linear (better calibrated on all three tasks measured), off elsewhere.
    assert MethodConfig(head="word_linear").calibrated
    assert not MethodConfig(head="word_linear", calibrate=False).calibrated
    assert not MethodConfig(head="linear").calibrated
    assert MethodConfig(kind="linear_probe", head="word_linear").head == "word_linear"  # a probe started as words
    with pytest.raises(ConfigError, match="not word_linear"):
        build_model(decoder, MethodConfig(kind="sk_prompt", head="word_linear"), ["O", "B-X"], token_level=True)


def test_word_linear_head_and_its_calibration_under_zero3(one_rank, tiny_llama_dir):
    """At ZeRO 3 the LM head is partitioned when the head copies its rows (gathered for the copy), and the
    calibration's forward gathers one module at a time; the engine then scores as the plain model does."""
    from skray.backbones import load_backbone
    from skray.config import BackboneConfig, DataConfig, MethodConfig, TrainConfig
    from skray.methods import build_model
    from skray.methods.base import content_free_input
    from skray.partitioned import is_partitioned
    from skray.train.deepspeed import build_engine, deepspeed_config

    train = TrainConfig(zero_stage=3, micro_batch_size=2, max_steps=4)
    cfg = MethodConfig(kind="sk_prompt", head="word_linear", calibrate=True, label_words=WORDS, prefix_length=3)
    models = []
    for zero3 in (deepspeed_config(train, 0), None):
        backbone = load_backbone(BackboneConfig(name=tiny_llama_dir), zero3_config=zero3)
        assert is_partitioned(backbone.model) == (zero3 is not None)
        torch.manual_seed(0)
        model = build_model(backbone, cfg, LABELS)
        free = content_free_input(backbone.tokenizer, DataConfig(template=TEMPLATE), add_special_tokens=False)
        model.calibrate(free["input_ids"], free["attention_mask"])
        models.append((model, backbone.tokenizer))
    (partitioned, tokenizer), (plain, _) = models
    torch.testing.assert_close(partitioned.head.proj.weight, plain.head.proj.weight, atol=0, rtol=0)
    torch.testing.assert_close(partitioned.head.proj.bias, plain.head.proj.bias, atol=1e-6, rtol=0)
    engine = build_engine(partitioned, train)
    ids, mask = _batch(tokenizer)
    with torch.no_grad():
        got = engine(ids, mask)
        want = plain.eval()(ids, mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["mixer", "mlp"])
def test_all_layers_at_once_are_each_layer_alone(kind):
    """PerLayer runs every layer's adapter in one vmapped pass over stacked weights: the same keys,
    values and gradients as each layer's KVAdapter on its own."""
    from skray.methods.adapters import kv_adapter

    torch.manual_seed(0)
    k, m = (5, 3) if kind == "mixer" else (5, 5)
    adapters = kv_adapter(kind, 4, k, m, 24, 8, rank=4)
    for p in adapters.parameters():  # away from the identity start, so every weight matters
        p.data += 0.1 * torch.randn_like(p)
    keys, values = torch.randn(4, k, 24), torch.randn(4, k, 24)
    batched = adapters(keys, values)
    sum(t.square().sum() for t in batched).backward()
    grads = [p.grad.clone() for p in adapters.parameters()]
    adapters.zero_grad()
    alone = [layer(kk, vv) for layer, kk, vv in zip(adapters, keys, values, strict=True)]
    sum(t.square().sum() for pair in alone for t in pair).backward()
    for got, want in zip(batched, zip(*alone, strict=True), strict=True):
        torch.testing.assert_close(got, torch.stack(want), rtol=1e-5, atol=1e-6)
    for got, p in zip(grads, adapters.parameters(), strict=True):
        torch.testing.assert_close(got, p.grad, rtol=1e-5, atol=1e-6)
