"""The recipe's training pieces in this process, on a real DeepSpeed engine (world size 1, gloo, CPU)."""

import os

import pandas as pd
import pytest
import torch

from skray.config import DataConfig, MethodConfig, TrainConfig
from skray.data.collate import encode, take
from skray.methods import build_model
from skray.train.batches import epoch_shard, train_batches
from skray.train.deepspeed import build_engine, lr_factor
from skray.train.evaluate import evaluate, task_loss

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def test_frozen_backbone_never_trains_in_dropout_mode(one_rank, encoder):
    """DeepSpeed's engine.train() sets train mode on the whole module; the frozen backbone (dropout 0.1
    in BERT) must stay in eval mode through evaluations and steps, while the adapter trains."""
    model = build_model(
        encoder, MethodConfig(kind="sk_prefix", head="linear", prefix_length=3, adapter_rank=2), ["a", "b"]
    )
    engine = build_engine(model, TrainConfig(zero_stage=2, micro_batch_size=2, max_steps=4, lr=1e-2))
    df = pd.DataFrame({"text": ["a fine film", "dull", "moving and funny", "too long"], "label": [1, 0, 1, 0]})
    data = encode(df, encoder.tokenizer, DataConfig(), add_special_tokens=True)
    # evaluate ends with engine.train(), which sets train mode on the whole module
    evaluate(engine, data, batch_size=2, rank=0, world=1, device=torch.device("cpu"), label_names=["a", "b"])
    batch = take(data, torch.arange(2))
    engine.backward(task_loss(engine(batch["input_ids"], batch["attention_mask"]), batch["labels"]))
    engine.step()
    assert not [n for n, m in model.backbone.named_modules() if m.training]
    assert model.adapters.training
    assert model.head.training


def test_lr_schedule_warms_up_then_decays_to_zero(one_rank, decoder):
    assert [lr_factor(s, 4, 10) for s in (0, 1, 3, 4, 7, 10)] == [0.25, 0.5, 1.0, 1.0, 0.5, 0.0]
    assert lr_factor(0, 0, 10) == 1.0  # no warm-up: full rate at once
    model = build_model(decoder, MethodConfig(kind="sk_prompt", head="linear", prefix_length=2), ["a", "b"])
    engine = build_engine(model, TrainConfig(zero_stage=0, lr=1e-2, max_steps=10, lr_warmup_steps=4))
    assert engine.get_lr()[0] == pytest.approx(1e-2 * 0.25)


@pytest.mark.parametrize(("n", "world", "micro"), [(10, 3, 2), (13, 2, 4), (17, 4, 1), (9, 1, 3)])
def test_every_rank_runs_the_same_batches_per_epoch(n, world, micro):
    """Ranks with different batch counts per epoch drift apart (one starts epoch 2 while another is in 1)."""
    for epoch in range(3):
        shards = [epoch_shard(n, micro, r, world, seed=0, epoch=epoch) for r in range(world)]
        assert len({len(s) for s in shards}) == 1
        assert len(shards[0]) % micro == 0
        rows = torch.cat(shards)
        assert len(set(rows.tolist())) == len(rows) > n - world * micro  # disjoint, at most a batch per rank left out
    streams = [train_batches(n, micro, r, world, seed=0) for r in range(world)]
    per_epoch = len(shards[0]) // micro
    for rank, stream in enumerate(streams):  # the stream goes through epoch 0 batch by batch
        first = torch.cat([next(stream) for _ in range(per_epoch)])
        assert torch.equal(first, epoch_shard(n, micro, rank, world, seed=0, epoch=0))


@pytest.mark.parametrize(("use_gpu", "accelerator"), [(True, "cuda"), (False, "cpu")])
def test_each_worker_names_its_own_accelerator(monkeypatch, use_gpu, accelerator):
    """Workers inherit DS_ACCELERATOR=cpu from the test (or driver) process; a GPU worker must not keep it."""
    from skray.train.recipe import setup_env

    monkeypatch.setenv("DS_ACCELERATOR", "cpu" if use_gpu else "cuda")
    setup_env(use_gpu)
    assert os.environ["DS_ACCELERATOR"] == accelerator


def test_gpu_process_groups_serve_cpu_tensors_too():
    """The recipe all-reduces CPU tensors (metrics, counts); NCCL alone has no CPU backend, so a GPU
    run's process group pairs it with gloo (Ray Train's TorchConfig takes torch's device:backend list)."""
    from skray.train.deepspeed import process_group_backend

    assert process_group_backend(False) == "gloo"
    backends = dict(item.split(":") for item in process_group_backend(True).split(","))
    assert backends == {"cpu": "gloo", "cuda": "nccl"}


def test_communication_buckets_fit_what_trains():
    from skray.train.deepspeed import deepspeed_config

    zero = deepspeed_config(TrainConfig(zero_stage=2), trainable_params=95_280)["zero_optimization"]
    assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == 2**20  # not DeepSpeed's 5e8
    full = deepspeed_config(TrainConfig(zero_stage=2), trainable_params=10**10)["zero_optimization"]
    assert full["reduce_bucket_size"] == 5 * 10**8


@pytest.mark.parametrize("workers", [1, 2, 4, 8])
def test_nvme_param_swap_buffers_hold_the_largest_partition(workers):
    """DeepSpeed's param swapper stages each partition (ceil(numel / world) elements) in one buffer of
    ``offload_param.buffer_size`` elements and asserts it fits; its default 1e8 is short of a Llama-3
    embedding's partition (128256 x 4096) on fewer than 6 ranks."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from deepspeed.runtime.zero.offload_config import DeepSpeedZeroOffloadParamConfig

    from skray.train.deepspeed import deepspeed_config

    embedding = 128256 * 4096
    train = TrainConfig(zero_stage=3, offload="params", offload_device="nvme", nvme_path="/nvme", num_workers=workers)
    zero = deepspeed_config(train, 10, largest_module_params=embedding, largest_param=embedding)["zero_optimization"]
    partition = (embedding + (-embedding) % workers) // workers  # DeepSpeed's _aligned_size // world
    assert partition <= DeepSpeedZeroConfig(**zero).offload_param.buffer_size  # get_buffer's assertion
    assert (partition <= DeepSpeedZeroOffloadParamConfig().buffer_size) == (workers >= 6)  # the default
    cpu = deepspeed_config(train.model_copy(update={"offload_device": "cpu"}), 10, largest_param=embedding)
    assert cpu["zero_optimization"]["offload_param"] == {"device": "cpu"}  # no swap buffers off NVMe


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_best_state_keeps_fp32_masters_of_a_bf16_run(one_rank, decoder, stage):
    """A bf16 run's module weights are the bf16 rounding of the optimizer's fp32 masters; the best state
    saved from it must be the masters, or small updates are lost on every save."""
    from skray.train.deepspeed import gather_trainable

    model = build_model(decoder, MethodConfig(kind="sk_prompt", head="linear", prefix_length=2), ["a", "b"])
    engine = build_engine(model, TrainConfig(zero_stage=stage, precision="bf16", lr=1e-3, max_steps=4))
    ids = torch.randint(3, decoder.model.config.vocab_size, (2, 5))
    engine.backward(task_loss(engine(ids, torch.ones_like(ids)), torch.tensor([0, 1])))
    engine.step()
    best = gather_trainable(engine)
    assert all(t.dtype == torch.float32 for t in best.values())
    rounded = [n for n, t in best.items() if torch.equal(t, t.bfloat16().float())]
    assert len(rounded) < len(best) / 2, f"best state holds bf16-rounded weights: {rounded}"


@pytest.mark.parametrize("kind", ["sk_prefix", "sk_prompt"])
def test_zero3_loads_partitioned_and_step0_still_reads_the_prompt_as_text(one_rank, tiny_llama_dir, kind):
    """At ZeRO 3 the backbone is built inside zero.Init (no rank holds it whole); the prompt pass and
    the verbalizer rows gather one module at a time, and the engine's step-0 scores are still those
    of the plain model reading wording + text (m = k)."""
    from skray.backbones import load_backbone
    from skray.config import BackboneConfig
    from skray.partitioned import is_partitioned
    from skray.train.deepspeed import deepspeed_config

    wording, words = "is this review positive or negative", {"neg": " negative", "pos": " positive"}
    texts = ["a wonderful moving film", "dull and far too long"]
    train = TrainConfig(zero_stage=3, micro_batch_size=2, max_steps=4)
    backbone = load_backbone(BackboneConfig(name=tiny_llama_dir), zero3_config=deepspeed_config(train, 0))
    assert is_partitioned(backbone.model)
    assert all(p.data.numel() == 0 for p in backbone.model.parameters())  # only partitions (ds_tensor) are held
    tok = backbone.tokenizer
    k = len(tok(wording)["input_ids"])
    cfg = MethodConfig(kind=kind, wording=wording, prefix_length=k, adapter_rank=2, label_words=words)
    engine = build_engine(build_model(backbone, cfg, ["neg", "pos"]), train)
    enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        got = engine(enc["input_ids"], enc["attention_mask"])

    plain = load_backbone(BackboneConfig(name=tiny_llama_dir)).model
    word_ids = [tok(w, add_special_tokens=False)["input_ids"][0] for w in words.values()]
    with torch.no_grad():
        want = [
            plain(
                input_ids=torch.tensor([tok(wording)["input_ids"] + tok(t, add_special_tokens=False)["input_ids"]])
            ).logits[0, -1, word_ids]
            for t in texts
        ]
    torch.testing.assert_close(got, torch.stack(want), atol=1e-4, rtol=1e-4)
