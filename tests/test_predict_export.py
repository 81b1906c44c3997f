"""`skray predict` and `skray export --format peft` on checkpoints written here, without Ray: a run
directory laid out as Ray Tune and Train leave it, with trained-looking (perturbed) adapters."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from skray.backbones import load_backbone
from skray.cli import main
from skray.config import BackboneConfig, DataConfig, MethodConfig
from skray.data.collate import encode
from skray.export import export_peft
from skray.methods import build_model
from skray.predict import find_checkpoint
from skray.train.checkpoint import load_trained, save_checkpoint

LABELS = ["rotten", "fresh"]
WORDS = {"rotten": " bad", "fresh": " good"}
TEMPLATE = "Review: {text}\nSentiment:"
TEXTS = ["a wonderful moving film", "dull and far too long to sit through", "great fun", "a tedious mess", "ok"]


def trained(
    backbone_dir: str,
    kind: str,
    head: str = "verbalizer",
    m: int = 3,
    token_level: bool = False,
    adapter: str = "mixer",
):
    """A model whose trainable weights moved away from their start, so nothing passes by identity."""
    cfg = MethodConfig(
        kind=kind,
        wording="is the review good or bad?",
        prefix_length=m,
        adapter_rank=2,
        head=head,
        label_words=WORDS,
        adapter=adapter,
    )
    labels = ["O", "B-X", "I-X"] if token_level else LABELS
    model = build_model(load_backbone(BackboneConfig(name=backbone_dir)), cfg, labels, token_level)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval(), cfg, labels


def save(
    directory: Path, backbone_dir: str, model, cfg: MethodConfig, labels, task="classification", precision="fp32"
) -> Path:
    """The files recipe._checkpoint_and_report writes (the fp32 masters of what trained, whatever the precision)."""
    state = {n: p.detach().float() for n, p in model.named_parameters() if p.requires_grad}
    meta = {
        "backbone": backbone_dir,
        "trust_remote_code": False,
        "method": cfg.model_dump(),
        "task": task,
        "label_names": labels,
        "template": "{text}" if task == "token_classification" else TEMPLATE,
        "max_length": 32,
        "precision": precision,
        "step": 4,
        "val_acc": 0.5,
    }
    save_checkpoint(directory, state, meta)
    return directory


def run_dir(
    tmp_path: Path,
    backbone_dir: str,
    scores: dict[str, float],
    text_column: str = "review",
    stopped: tuple[str, ...] = (),
    head: str = "verbalizer",
    select_by: str = "accuracy",
    f1: dict[str, float] | None = None,
) -> Path:
    """Trials as Tune leaves them (params.json, result.json lines) and their checkpoints as Train does;
    the ``stopped`` ones ASHA stopped at step 2, never tested."""
    run = tmp_path / "run"
    run.mkdir()
    data = {"text_column": text_column, "template": TEMPLATE}
    config = {"config": {"data": data, "train": {"select_by": select_by}}, "command": "tune"}
    (run / "experiment.json").write_text(json.dumps(config))
    for n, (trial, score) in enumerate(scores.items()):
        trial_dir = run / f"run_trial_{trial}_0000{n}_0_lr=0.01_2026-01-01"
        trial_dir.mkdir()
        (trial_dir / "params.json").write_text(json.dumps({"lr": 0.01}))
        scored = {"best_val_acc": score, "best_val_f1": (f1 or {}).get(trial, score)}
        reports = [{"trial_id": trial, "step": s, **scored} for s in ((0, 2) if trial in stopped else (0, 4))]
        if trial not in stopped:
            reports[-1] |= {"test_acc": 0.5, "test_f1": 0.5, "done": True}
        (trial_dir / "result.json").write_text("\n".join(json.dumps(r) for r in reports) + "\n")
        kind = "sk_prompt" if head == "word_linear" else "sk_prefix"
        model, cfg, labels = trained(backbone_dir, kind, head=head, m=2 + n)
        for step in (0, 1):  # Ray keeps the newest; an older one may linger while it writes
            save(run / f"train_{trial}" / f"checkpoint_00000{step}", backbone_dir, model, cfg, labels)
    (run / "finished").write_text("")
    return run


def scores_of(checkpoint: Path, texts: list[str], pairs=None) -> torch.Tensor:
    """The model's own softmax over the classes, through the training path (encode + forward)."""
    model, meta = load_trained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(meta["backbone"])
    frame = pd.DataFrame({"text": texts, "label": 0})
    cfg = DataConfig(template=meta["template"], max_length=meta["max_length"])
    enc = encode(frame, tokenizer, cfg, add_special_tokens=False)
    with torch.no_grad():
        return model(enc["input_ids"], enc["attention_mask"]).softmax(-1)


def test_predict_a_run_uses_the_best_trials_newest_checkpoint(tmp_path, tiny_llama_dir, capsys):
    run = run_dir(tmp_path, tiny_llama_dir, {"aaa": 0.6, "bbb": 0.9, "ccc": 0.7})
    assert find_checkpoint(run) == run / "train_bbb" / "checkpoint_000001"
    assert find_checkpoint(run / "train_aaa") == run / "train_aaa" / "checkpoint_000001"  # a trial's own, named
    source = tmp_path / "reviews.csv"
    pd.DataFrame({"id": range(len(TEXTS)), "review": TEXTS, "label": ["x"] * len(TEXTS)}).to_csv(source, index=False)

    assert main(["predict", str(run), str(source)]) == 0
    out = pd.read_csv(tmp_path / "reviews.predictions.csv")
    assert list(out.columns) == ["id", "review", "input_label", "label", "prob_rotten", "prob_fresh"]
    assert len(out) == len(TEXTS)
    assert list(out["review"]) == TEXTS
    probs = torch.tensor(out[["prob_rotten", "prob_fresh"]].to_numpy(), dtype=torch.float32)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(TEXTS)))
    want = scores_of(run / "train_bbb" / "checkpoint_000001", TEXTS)
    torch.testing.assert_close(probs, want, atol=1e-6, rtol=1e-5)
    assert list(out["label"]) == [LABELS[i] for i in want.argmax(1).tolist()]
    assert "train_bbb" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_predict_a_checkpoint_from_jsonl_or_parquet_to_any_format(tmp_path, tiny_llama_dir, suffix):
    model, cfg, labels = trained(tiny_llama_dir, "sk_prompt", head="linear")
    checkpoint = save(tmp_path / "ckpt", tiny_llama_dir, model, cfg, labels)
    frame = pd.DataFrame({"text": TEXTS})
    source = tmp_path / f"in{suffix}"
    frame.to_json(source, orient="records", lines=True) if suffix == ".jsonl" else frame.to_parquet(source)
    target = tmp_path / "deep" / "out.parquet"
    assert main(["predict", str(checkpoint), str(source), "--out", str(target), "--device", "cpu"]) == 0
    out = pd.read_parquet(target)
    assert set(out["label"]) <= set(LABELS)
    assert len(out) == len(TEXTS)
    want = scores_of(checkpoint, TEXTS)
    torch.testing.assert_close(torch.tensor(out[["prob_rotten", "prob_fresh"]].to_numpy()).float(), want)


def test_predict_tags_every_word(tmp_path, tiny_llama_dir):
    model, cfg, labels = trained(tiny_llama_dir, "sk_prompt", head="linear", token_level=True)
    checkpoint = save(tmp_path / "ckpt", tiny_llama_dir, model, cfg, labels, task="token_classification")
    rows = [["John", "lives", "in", "Berlin"], ["ok"], ["word"] * 40]  # the last is cut at max_length 32
    source = tmp_path / "words.jsonl"
    pd.DataFrame({"text": rows}).to_json(source, orient="records", lines=True)
    assert main(["predict", str(checkpoint), str(source)]) == 0
    out = pd.read_json(tmp_path / "words.predictions.jsonl", lines=True)
    assert [len(tags) for tags in out["label"]] == [4, 1, 40]
    assert all(t in labels for t in out["label"][0] + out["label"][1])
    assert out["label"][2][-1] is None
    assert out["label"][2][0] in labels
    for i, word in enumerate(rows[0]):
        total = sum(out[f"prob_{c}"][0][i] for c in labels)
        assert total == pytest.approx(1, abs=1e-6), word


def test_predict_and_export_take_the_best_completed_trial_not_one_asha_stopped(tmp_path, tiny_llama_dir, capsys):
    """bbb has the best validation score but ASHA stopped it untested: the best trial is ccc, the best of
    those completed, in predict, export and the run's closing line alike (skray.results.best_trial)."""
    from skray.report import show
    from skray.results import load_results

    run = run_dir(tmp_path, tiny_llama_dir, {"aaa": 0.6, "bbb": 0.9, "ccc": 0.7}, stopped=("bbb",), head="word_linear")
    table = load_results(str(run))
    assert list(table["trial"]) == ["bbb", "ccc", "aaa"]  # the table itself ranks by validation
    assert table["status"].tolist() == ["early_stopped", "completed", "completed"]
    assert find_checkpoint(run) == run / "train_ccc" / "checkpoint_000001"
    source = tmp_path / "reviews.csv"
    pd.DataFrame({"review": TEXTS}).to_csv(source, index=False)
    capsys.readouterr()
    assert main(["predict", str(run), str(source)]) == 0
    assert "train_ccc" in capsys.readouterr().err
    export_peft(str(run), str(tmp_path / "peft"))
    assert "train_ccc" in capsys.readouterr().err
    table.loc[:, "majority_test_acc"] = 0.4  # what the closing line weighs the best trial against
    assert "best trial by validation (ccc)" in show(table)


def test_select_by_macro_f1_picks_the_trial_best_by_validation_macro_f1(tmp_path, tiny_llama_dir):
    from skray.results import best_trial, load_results

    scores, f1 = {"aaa": 0.9, "bbb": 0.6}, {"aaa": 0.4, "bbb": 0.8}
    run = run_dir(tmp_path, tiny_llama_dir, scores, select_by="macro_f1", f1=f1)
    table = load_results(str(run))
    assert table.attrs["selection"] == "best_val_f1"
    assert list(table["trial"]) == ["bbb", "aaa"]
    assert best_trial(table)["trial"] == "bbb"
    assert best_trial(table, "best_val_acc")["trial"] == "aaa"
    assert find_checkpoint(run) == run / "train_bbb" / "checkpoint_000001"


def test_a_run_with_no_completed_trial_has_no_best_trial_to_predict_with(tmp_path, tiny_llama_dir, capsys):
    run = run_dir(tmp_path, tiny_llama_dir, {"aaa": 0.6}, stopped=("aaa",))
    source = tmp_path / "reviews.csv"
    pd.DataFrame({"review": TEXTS}).to_csv(source, index=False)
    err = one_line_error(capsys, ["predict", str(run), str(source)])
    assert "no trial of this run has completed" in err
    assert main(["predict", str(run / "train_aaa" / "checkpoint_000001"), str(source)]) == 0  # named: taken


def test_a_calibrated_word_linear_checkpoint_rebuilds_as_it_was_trained(tmp_path, tiny_llama_dir):
    """The calibrated bias is a trained weight: the checkpoint keeps it and load_trained (predict,
    export) rebuilds the model from the method config without calibrating again."""
    from skray.methods.base import content_free_input

    model, cfg, labels = trained(tiny_llama_dir, "sk_prefix", head="word_linear")
    cfg = cfg.model_copy(update={"calibrate": True})
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    free = content_free_input(tokenizer, DataConfig(template=TEMPLATE), add_special_tokens=False)
    model.calibrate(free["input_ids"], free["attention_mask"])
    checkpoint = save(tmp_path / "ckpt", tiny_llama_dir, model, cfg, labels)
    loaded, meta = load_trained(checkpoint)
    assert meta["method"]["calibrate"] is True
    torch.testing.assert_close(loaded.head.proj.bias, model.head.proj.bias, atol=0, rtol=0)
    enc = tokenizer(
        [TEMPLATE.format(text=t) for t in TEXTS], add_special_tokens=False, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        want = model(enc["input_ids"], enc["attention_mask"])
        torch.testing.assert_close(loaded(enc["input_ids"], enc["attention_mask"]), want, atol=0, rtol=0)
    torch.testing.assert_close(scores_of(checkpoint, TEXTS), want.softmax(-1))


def one_line_error(capsys, argv) -> str:
    """Exit 2 and one line from skray (transformers' loading bars may come before it)."""
    capsys.readouterr()  # what building the fixtures printed
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("skray:")]
    assert len(lines) == 1, lines
    assert lines[0].startswith("skray: error: ")
    return lines[0]


def test_predict_errors_are_one_line(tmp_path, tiny_llama_dir, capsys):
    run = run_dir(tmp_path, tiny_llama_dir, {"aaa": 0.6})
    source = tmp_path / "reviews.csv"
    pd.DataFrame({"id": [1], "text": ["fine"]}).to_csv(source, index=False)
    err = one_line_error(capsys, ["predict", str(run), str(source)])
    assert "'review' not found" in err
    assert "['review']" in err
    assert "the file has: id, text" in err
    unquoted = tmp_path / "unquoted.csv"
    unquoted.write_text("review\nfine, really\ndull, sadly\n")  # read as an index column, the texts were cut
    err = one_line_error(capsys, ["predict", str(run), str(unquoted)])
    assert "line 2 has more fields than the header line (review): a comma in a text that is not quoted?" in err
    err = one_line_error(capsys, ["predict", str(tmp_path), str(source)])
    assert "neither a run directory, a trial's folder nor a checkpoint" in err
    err = one_line_error(capsys, ["predict", str(tmp_path / "nowhere"), str(source)])
    assert "neither a run directory, a trial's folder nor a checkpoint" in err
    meta_path = next(run.glob("train_*/checkpoint_000001/skray.json"))
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "backbone": str(tmp_path / "gone")}))
    pd.DataFrame({"review": ["fine"]}).to_csv(source, index=False)
    err = one_line_error(capsys, ["predict", str(run), str(source)])
    assert "backbone" in err
    assert "gone" in err
    other = LlamaForCausalLM(
        LlamaConfig(vocab_size=30522, hidden_size=24, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    )
    other.save_pretrained(tmp_path / "other")
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(tmp_path / "other")
    meta_path.write_text(json.dumps({**meta, "backbone": str(tmp_path / "other")}))
    err = one_line_error(capsys, ["predict", str(run), str(source)])
    assert "not the backbone it was trained on" in err
    assert "size mismatch" in err


def peft_label_scores(directory: Path, backbone_dir: str, ids, mask) -> torch.Tensor:
    """What the exported README.md says to do, with transformers and PEFT alone."""
    info = json.loads((directory / "head.json").read_text())
    auto = AutoModelForCausalLM if info["head"] == "verbalizer" else AutoModel
    model = PeftModel.from_pretrained(auto.from_pretrained(backbone_dir), directory).eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    drop, last = info["virtual_positions_in_output"], mask.sum(1) - 1
    rows = torch.arange(len(ids))
    if info["head"] == "verbalizer":
        return out.logits[:, drop:][rows, last][:, info["label_token_ids"]]
    head = torch.nn.Linear(out.last_hidden_state.size(-1), len(info["labels"]))
    head.load_state_dict(load_file(directory / "head.safetensors"))
    hidden = out.last_hidden_state[:, drop:]
    with torch.no_grad():
        return head(hidden.mean(1) if info["pooling"] == "all_positions" else hidden[rows, last])


@pytest.mark.parametrize(
    ("kind", "head", "m", "adapter"),
    [
        ("sk_prompt", "verbalizer", 3, "mixer"),
        ("sk_prompt", "linear", 5, "mixer"),
        ("sk_prefix", "verbalizer", 3, "mixer"),  # fewer positions than the wording's 9 tokens: keys are rotated back
        ("sk_prefix", "verbalizer", 12, "mixer"),  # more
        ("sk_prefix", "linear", 9, "mixer"),  # as many: nothing to rotate
        ("sk_prefix", "verbalizer", 9, "linear"),  # the variants (m = k): one shared map, the authors' free prompt
        ("sk_prefix", "verbalizer", 9, "free"),
        ("sk_prompt", "mean_linear", 9, "mlp"),
        ("sk_prompt", "word_linear", 5, "mixer"),  # the head that starts as the verbalizer: a linear head in PEFT
        ("sk_prefix", "word_linear", 3, "mixer"),
        # the PEFT baselines (a mixed search's best can be one), re-wrapped for the head's model
        ("lora", "verbalizer", 3, "mixer"),
        ("lora", "linear", 3, "mixer"),
        ("prompt_tuning", "verbalizer", 4, "mixer"),
        ("prompt_tuning_text", "word_linear", 4, "mixer"),
        ("prefix_tuning", "verbalizer", 4, "mixer"),
        ("p_tuning", "linear", 4, "mixer"),  # its encoder's output is what PEFT saves
    ],
)
def test_export_scores_like_skray_in_peft(tmp_path, tiny_llama_dir, kind, head, m, adapter):
    model, cfg, labels = trained(tiny_llama_dir, kind, head, m, adapter=adapter)
    checkpoint = save(tmp_path / "ckpt", tiny_llama_dir, model, cfg, labels)
    export_peft(str(checkpoint), str(tmp_path / "peft"))
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    peft_type = {"sk_prompt": "PROMPT_TUNING", "sk_prefix": "PREFIX_TUNING", "prompt_tuning_text": "PROMPT_TUNING"}
    assert config["peft_type"] == peft_type.get(kind, kind.upper())
    assert config["task_type"] == ("CAUSAL_LM" if head == "verbalizer" else "FEATURE_EXTRACTION")
    assert config.get("num_virtual_tokens", m) == m
    assert "good" in (tmp_path / "peft" / "README.md").read_text() or head != "verbalizer"

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    enc = tokenizer(
        [TEMPLATE.format(text=t) for t in TEXTS], add_special_tokens=False, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        want = model(enc["input_ids"], enc["attention_mask"])
    got = peft_label_scores(tmp_path / "peft", tiny_llama_dir, enc["input_ids"], enc["attention_mask"])
    assert want.abs().max() > 1e-2
    assert (want[:, 0] - want[:, 1]).abs().max() > 1e-3
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_export_refuses_what_trains_no_adapter_and_a_used_folder(tmp_path, tiny_llama_dir, capsys):
    model, cfg, labels = trained(tiny_llama_dir, "linear_probe", head="linear")
    checkpoint = save(tmp_path / "ckpt", tiny_llama_dir, model, cfg, labels)
    err = one_line_error(capsys, ["export", str(checkpoint), "--format", "peft", "--out", str(tmp_path / "x")])
    assert "method.kind linear_probe trains none (only a head)" in err
    assert not (tmp_path / "x").exists()
    err = one_line_error(capsys, ["export", str(checkpoint), "--out", str(tmp_path)])
    assert "not an empty folder" in err


@pytest.mark.slow
def test_export_sk_prefix_on_real_smollm2(tmp_path):
    """SmolLM2: 9 query heads over 3 key/value heads, rotary positions; m = 4 differs from the wording's
    k = 7, so the keys are rotated (unrotated, the scores are off by about 6.5). Measured: 1.6e-5 at
    scores of about 12, fp32 rounding (the same check for SK-Prompt: 8.6e-6; left out to stay short)."""
    from skray.backbones import resolve

    model, cfg, labels = trained("smollm2-135m", "sk_prefix", m=4)
    checkpoint = save(tmp_path / "ckpt", "smollm2-135m", model, cfg, labels)
    export_peft(str(checkpoint), str(tmp_path / "peft"))
    folder = resolve("smollm2-135m")
    enc = AutoTokenizer.from_pretrained(folder)
    enc.pad_token = enc.eos_token
    batch = enc([TEMPLATE.format(text=t) for t in TEXTS], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = model(batch["input_ids"], batch["attention_mask"])
    got = peft_label_scores(tmp_path / "peft", folder, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def without_precision(checkpoint: Path) -> Path:
    """A checkpoint as written before skray.json recorded the run's precision."""
    meta = json.loads((checkpoint / "skray.json").read_text())
    del meta["precision"]
    (checkpoint / "skray.json").write_text(json.dumps(meta))
    return checkpoint


@pytest.mark.parametrize(("kind", "cache"), [("sk_prefix", "prompt_keys"), ("sk_prompt", "prompt_states")])
def test_a_checkpoint_loads_in_its_runs_precision_with_the_prompt_cache_the_run_read(
    tmp_path, tiny_llama_dir, kind, cache
):
    model, cfg, labels = trained(tiny_llama_dir, kind)
    loaded, meta = load_trained(save(tmp_path / "bf16", tiny_llama_dir, model, cfg, labels, precision="bf16"))
    assert meta["precision"] == "bf16"
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}  # backbone, adapter and head
    assert loaded.backbone.base_model.rotary_emb.inv_freq.dtype == torch.float32  # buffers kept, as DeepSpeed does
    run = build_model(load_backbone(BackboneConfig(name=tiny_llama_dir), torch.bfloat16), cfg, labels)
    assert torch.equal(getattr(loaded, cache), getattr(run, cache).bfloat16())  # the prompt pass ran in bf16
    for name, p in loaded.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, dict(model.named_parameters())[name].bfloat16(), atol=0, rtol=0)

    old = without_precision(save(tmp_path / "old", tiny_llama_dir, model, cfg, labels, precision="bf16"))
    assert {p.dtype for p in load_trained(old)[0].parameters()} == {torch.float32}


def test_predict_with_a_bf16_checkpoint_scores_in_bf16(tmp_path, tiny_llama_dir):
    model, cfg, labels = trained(tiny_llama_dir, "sk_prefix")
    bf16 = save(tmp_path / "bf16", tiny_llama_dir, model, cfg, labels, precision="bf16")
    fp32 = save(tmp_path / "fp32", tiny_llama_dir, model, cfg, labels)
    source = tmp_path / "reviews.csv"
    pd.DataFrame({"text": TEXTS}).to_csv(source, index=False)
    probs = {}
    for checkpoint in (bf16, fp32):
        target = tmp_path / f"{checkpoint.name}.csv"
        assert main(["predict", str(checkpoint), str(source), "--out", str(target), "--device", "cpu"]) == 0
        probs[checkpoint.name] = torch.tensor(pd.read_csv(target)[["prob_rotten", "prob_fresh"]].to_numpy()).float()
    torch.testing.assert_close(probs["bf16"], scores_of(bf16, TEXTS), atol=1e-6, rtol=1e-5)
    assert (probs["bf16"] - probs["fp32"]).abs().max() > 1e-4  # bf16's rounding shows: not the fp32 model


@pytest.mark.parametrize(("kind", "head", "m"), [("sk_prefix", "verbalizer", 3), ("sk_prompt", "linear", 5)])
def test_export_of_a_bf16_checkpoint_holds_the_adapter_the_bf16_model_scores_with(
    tmp_path, tiny_llama_dir, kind, head, m
):
    model, cfg, labels = trained(tiny_llama_dir, kind, head, m)
    checkpoint = save(tmp_path / "ckpt", tiny_llama_dir, model, cfg, labels, precision="bf16")
    export_peft(str(checkpoint), str(tmp_path / "peft"))
    weights = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    (embedding,) = weights.values()
    assert torch.equal(embedding, embedding.bfloat16().float())  # computed by the bf16 model: bf16 values
    if head == "linear":
        assert {t.dtype for t in load_file(tmp_path / "peft" / "head.safetensors").values()} == {torch.float32}

    loaded, _ = load_trained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    enc = tokenizer(
        [TEMPLATE.format(text=t) for t in TEXTS], add_special_tokens=False, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        want = loaded(enc["input_ids"], enc["attention_mask"]).float()
    got = peft_label_scores(tmp_path / "peft", tiny_llama_dir, enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(got, want, atol=0.02 * max(1.0, float(want.abs().max())), rtol=0)
