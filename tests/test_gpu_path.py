"""The GPU path without a GPU: device placement on a stand-in device (tests/device_check.py) and the
bf16 numerics with real bf16 on the CPU (issue 26, items 1-5)."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from skray.backbones import Backbone
from skray.config import MethodConfig
from skray.devices import compute_device, place
from skray.methods import build_model
from skray.methods.heads import VerbalizerHead, pool
from skray.train.evaluate import evaluate, task_loss
from tests.conftest import minilm_tokenizer, tiny_llama
from tests.device_check import GPU, DeviceMismatch, SameDevice

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import gpu_smoke  # noqa: E402  (benchmarks/ is not a package)

WORDING = "classify the sentiment of the review as positive or negative"
LABELS = ["neg", "pos"]
WORDS = {"neg": " negative", "pos": " positive"}  # the wording is k = 12 tokens (m = k for adapter free)


def _method(kind: str, head: str = "verbalizer", adapter: str = "mixer") -> MethodConfig:
    return MethodConfig(
        kind=kind, wording=WORDING, prefix_length=12, adapter_rank=4, head=head, label_words=WORDS, adapter=adapter
    )


def _batch(device: torch.device, rows: int = 3, length: int = 7) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 1000, (rows, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0  # a padded row
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "labels": torch.tensor([0, 1, 1]).to(device),
    }


def _train_pass(model: nn.Module, device: torch.device) -> None:
    """A training step's forward and backward on a batch on ``device``: what a worker's step runs."""
    batch = _batch(device)
    task_loss(model(batch["input_ids"], batch["attention_mask"]), batch["labels"]).backward()


def test_the_device_check_catches_a_cpu_tensor_meeting_the_gpu():
    """The check itself: an embedding lookup with CPU ids into weights on the stand-in raises, as on CUDA."""
    weight = torch.empty(10, 4, device=GPU)
    with SameDevice(), pytest.raises(DeviceMismatch, match="embedding"):
        nn.functional.embedding(torch.tensor([[1, 2]]), weight)
    with SameDevice():  # a 0-dim CPU tensor is a scalar to CUDA; CPU indices index a GPU tensor
        (weight * torch.tensor(2.0))[torch.tensor([0, 1])]


@pytest.mark.parametrize(("kind", "adapter"), [("sk_prefix", "mixer"), ("sk_prompt", "mixer"), ("sk_prefix", "free")])
def test_prompt_pass_runs_where_the_backbone_already_is(kind, adapter):
    """Item 1: a backbone on the GPU (gpu_smoke, screen, and at ZeRO 3 where zero.Init puts the
    partitions on the GPU) reads the prompt there: the prompt's ids are made on its device."""
    backbone = Backbone(place(tiny_llama(), GPU, torch.float32, frozen=nn.Module()), minilm_tokenizer(), True)
    with SameDevice():
        model = build_model(backbone, _method(kind, adapter=adapter), LABELS)
        _train_pass(place(model, GPU, torch.float32, frozen=backbone.model), GPU)
    assert model.prompt_ids.device == GPU


def test_a_zero3_backbone_computes_on_the_accelerator(monkeypatch):
    """Item 1 at ZeRO 3: a partitioned weight's placeholder says nothing of where it computes (its
    partition may even sit in CPU RAM with offload); the accelerator DeepSpeed gathers onto does."""
    from deepspeed.accelerator import get_accelerator

    monkeypatch.setattr(type(get_accelerator()), "current_device_name", lambda self: "cuda:3")
    model = nn.Linear(2, 2)
    assert compute_device(model) == torch.device("cpu")
    model.weight.ds_id = 0  # what zero.Init marks a partitioned parameter with
    assert compute_device(model) == torch.device("cuda:3")


@pytest.mark.parametrize(("kind", "head"), [("sk_prefix", "verbalizer"), ("sk_prompt", "linear"), ("lora", "linear")])
def test_the_workers_order_places_everything_on_the_gpu(kind, head):
    """The recipe's order: build where the backbone loaded (CPU), then place on the worker's device;
    a training pass and a sharded evaluation batch then meet no CPU tensor."""
    backbone = Backbone(tiny_llama(), minilm_tokenizer(), True)
    model = place(build_model(backbone, _method(kind, head), LABELS), GPU, torch.bfloat16, frozen=backbone.model)
    data = {k: v.cpu() for k, v in _batch(torch.device("cpu")).items()}
    with SameDevice():
        _train_pass(model, GPU)
        scores = evaluate(model, data, batch_size=2, rank=0, world=1, device=GPU, label_names=LABELS)
    assert set(scores) >= {"acc", "f1", "loss"}


def test_gpu_smoke_builds_its_model_on_the_gpu():
    """Item 3, devices: gpu_smoke.py moves the backbone to the GPU before building SK-Prefix."""
    with SameDevice():
        bb = gpu_smoke.backbone("tiny", torch.bfloat16, GPU)
        _train_pass(gpu_smoke.sk_prefix(bb, 16, 8, torch.bfloat16), GPU)


def test_gpu_smoke_model_trains_in_bf16():
    """Item 3, dtypes, with real bf16 on the CPU: adapters and head in the backbone's bf16, so
    attention never meets fp32 prefix keys beside bf16 queries; step 0 still equals the prompt read
    as text, to bf16's resolution."""
    cpu = torch.device("cpu")
    bb = gpu_smoke.backbone("tiny", torch.bfloat16, cpu)
    _train_pass(gpu_smoke.sk_prefix(bb, 16, 8, torch.bfloat16), cpu)
    assert gpu_smoke.step0_gap(bb, cpu, torch.bfloat16) < 0.1


def test_last_token_pooling_counts_positions_beyond_bf16s_integers():
    """Item 2: rows of 257 and 303 real tokens in bf16 (257 rounds to 256 there, 303 to 304)."""
    hidden = torch.randn(2, 303, 8).to(torch.bfloat16)
    mask = torch.ones(2, 303, dtype=torch.long)
    mask[0, 257:] = 0
    pooled = pool(hidden, mask, last_token=True)
    assert torch.equal(pooled, torch.stack([hidden[0, 256], hidden[1, 302]]).float())


def test_mean_pooling_sums_in_fp32():
    """Item 2: the mean of 300 bf16 states, summed in bf16, is off by its rounding; in fp32 it is exact."""
    hidden = (torch.randn(1, 300, 8) + 3).to(torch.bfloat16)
    mask = torch.ones(1, 300, dtype=torch.long)
    expected = hidden.double().mean(1)
    assert torch.allclose(pool(hidden, mask, last_token=False).double(), expected, rtol=1e-6)


def test_verbalizer_scores_near_labels_in_fp32():
    """Item 4: scores 100 and 100.25 tie in bf16 (its spacing at 100 is 0.5) and argmax took label 0."""
    lm_head = nn.Linear(2, 2, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        lm_head.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.25]]))
    head = VerbalizerHead(lm_head, [0, 1])
    scores = head(torch.tensor([[100.0, 1.0]], dtype=torch.bfloat16))
    assert scores.dtype == torch.float32
    assert scores.argmax(-1).item() == 1


def test_placing_in_bf16_keeps_the_rotary_frequencies_of_the_cached_prompt():
    """Item 5: the prompt was cached with fp32 rotary frequencies; cast to bf16 with the weights,
    the input would be rotated with others (cos off by 0.02 at position 128). Parameters and the
    method's own buffers (the prompt cache) take the run's dtype; the backbone's buffers keep theirs."""
    backbone = Backbone(
        place(tiny_llama(), torch.device("cpu"), torch.bfloat16, frozen=nn.Module()), minilm_tokenizer(), True
    )
    backbone.model.model.rotary_emb.inv_freq = backbone.model.model.rotary_emb.inv_freq.float()  # as loading leaves it
    rotary = backbone.model.model.rotary_emb
    positions = torch.tensor([[128, 512]])
    probe = torch.zeros(1, 2, 8)
    before = rotary(probe, positions)[0]
    model = build_model(backbone, _method("sk_prefix"), LABELS)
    place(model, torch.device("cpu"), torch.bfloat16, frozen=backbone.model)
    assert rotary.inv_freq.dtype == torch.float32
    assert torch.equal(rotary(probe, positions)[0], before)
    assert model.prompt_keys.dtype == model.adapters.parameters().__next__().dtype == torch.bfloat16


def test_a_packed_slot_steps_and_evaluates_its_members_on_the_gpu(tiny_experiment):
    """A packed slot on the GPU: the backbone moved there at set-up, members of every joining kind (past
    keys/values of different m, prepended embeddings, PEFT's prompt, the linear probe) built on it and
    placed there; a packed step (forward, per-member losses, clipping, AdamW) and a packed evaluation
    meet no CPU tensor."""
    from skray.train.packed import PackedSlot, evaluate_packed

    backbone = Backbone(tiny_llama(), minilm_tokenizer(), True)
    backbone.model.to(GPU)  # as PackedSlot.setup moves it
    slot = object.__new__(PackedSlot)  # no Ray, one rank
    slot.device, slot.rank, slot.world, slot.slot, slot.backbone = GPU, 0, 1, 0, backbone
    slot.label_names, slot.facts, slot.class_weight = LABELS, {}, torch.tensor([0.4, 0.6])
    slot.cfg = tiny_experiment(train__precision="fp32")
    data = {k: v.cpu() for k, v in _batch(torch.device("cpu"), rows=8).items()}
    slot.data = {"train": data}
    specs = [
        {"kind": "sk_prefix", "prefix_length": 4},
        {"kind": "sk_prompt", "prefix_length": 6, "head": "linear"},
        {"kind": "prompt_tuning", "prefix_length": 3},
        {"kind": "linear_probe", "head": "linear"},
    ]
    with SameDevice():
        slot.seats = []
        for i, spec in enumerate(specs):
            method = {"wording": WORDING, "adapter_rank": 2, "label_words": WORDS} | spec
            cfg = tiny_experiment(
                train__micro_batch_size=2, train__num_workers=1, **{f"method__{k}": v for k, v in method.items()}
            )
            slot.run_dir = cfg.storage_path
            slot.seats.append(slot._member(f"m0000000{i}", {}, cfg))
        slot._step()
        scores = evaluate_packed(
            backbone.model,
            [m.model for m in slot.seats],
            data,
            batch_size=4,
            rank=0,
            world=1,
            device=GPU,
            label_names=LABELS,
        )
    assert len(scores) == len(specs)
    assert all(p.device == GPU for m in slot.seats for p in m.params)
