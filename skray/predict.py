"""`skray predict`: a trained checkpoint labels a file's rows the way it was trained to read them.

The row goes through the checkpoint's own template, truncation and head (``skray.data.collate``,
``load_trained``), so a prediction here is what the run's evaluation would have scored.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from skray.config import BackboneConfig, DataConfig
from skray.errors import BackboneError, ConfigError, DataError, ResourceError, SkrayError
from skray.train.checkpoint import META, WEIGHTS

WRITERS = {
    ".csv": lambda df, p: df.to_csv(p, index=False),
    ".jsonl": lambda df, p: df.to_json(p, orient="records", lines=True, force_ascii=False),
    ".parquet": lambda df, p: df.to_parquet(p, index=False),
}


def find_checkpoint(source: str | Path) -> Path:
    """A checkpoint folder as given; a trial's folder (``RUN_DIR/train_<trial>``): its newest
    checkpoint, tested or not; a run directory: its best trial's checkpoint.

    The best trial is ``skray.results.best_trial``'s: completed (tested), by the selection metric on
    validation, as the run's closing line names it; a trial ASHA stopped was never tested and is not
    taken. Each report of a trial replaces its checkpoint (Ray keeps one) and every checkpoint holds
    the best weights so far, so the trial's newest checkpoint holds the weights behind that best score.
    """
    from skray.results import best_trial, experiment, load_results

    path = Path(source)
    if (path / META).is_file() and (path / WEIGHTS).is_file():
        return path
    in_trial = _newest_checkpoint(path)
    if in_trial:
        return in_trial
    not_run = (
        f"{source}: neither a run directory, a trial's folder nor a checkpoint (a folder with {WEIGHTS} and {META})"
    )
    if not path.is_dir():
        raise ConfigError(not_run)
    try:
        table = load_results(str(path))
    except SkrayError:
        raise ConfigError(not_run) from None
    best = best_trial(table)
    if best is None:
        raise ConfigError(
            f"{source}: no trial of this run has completed (been tested), so it has no best trial; "
            f"name a checkpoint folder (RUN_DIR/train_<trial>/checkpoint_*) to use an untested one"
        )
    found = _newest_checkpoint(path / f"train_{best['trial']}")
    if not found:
        pieces = experiment(str(path)).get("merged_from")
        where = f" (a merged folder keeps none: its trials ran in {', '.join(pieces)})" if pieces else ""
        raise ConfigError(f"{source}: the best trial, {best['trial']}, has no checkpoint here{where}")
    return found


def _newest_checkpoint(trial: Path) -> Path | None:
    """A trial folder's newest checkpoint (``checkpoint_*`` with skray's metadata), None if none."""
    found = sorted(p.parent for p in trial.glob(f"checkpoint_*/{META}"))
    return found[-1] if found else None


def load_model(checkpoint: Path, device: torch.device | str = "cpu") -> tuple[Any, dict]:
    """``load_trained`` with its failures as one line: a backbone that is gone, or not the one trained."""
    from skray.train.checkpoint import load_trained

    meta = json.loads((checkpoint / META).read_text())
    try:
        return load_trained(checkpoint, device)
    except torch.OutOfMemoryError:
        precision = meta.get("precision", "fp32")
        raise ResourceError(f"{checkpoint}: the {precision} model does not fit on {device}; use --device cpu") from None
    except BackboneError as err:
        raise BackboneError(f"{checkpoint}: {err}") from None
    except (OSError, ValueError, RuntimeError) as err:
        reason = " ".join(str(err).split())[:240] or type(err).__name__
        raise BackboneError(
            f"{checkpoint}: cannot rebuild the trained model on backbone {meta.get('backbone')!r} "
            f"(not available here, or not the backbone it was trained on): {reason}"
        ) from None


def data_config(checkpoint: Path, meta: dict) -> DataConfig:
    """The run's data settings: columns from its experiment.json (two levels up, if there), template,
    length and task from the checkpoint itself. Without experiment.json the columns are the defaults,
    ``text`` (and ``text_pair`` when the template reads one)."""
    if "template" not in meta:
        raise ConfigError(f"{checkpoint}: {META} does not say which template the model was trained with")
    run_file = checkpoint.parent.parent / "experiment.json"
    data = json.loads(run_file.read_text()).get("config", {}).get("data", {}) if run_file.is_file() else {}
    columns = {k: data[k] for k in ("text_column", "text_pair_column") if k in data}
    if not data and "{text_pair}" in meta["template"]:
        columns["text_pair_column"] = "text_pair"
    return DataConfig(
        template=meta["template"],
        max_length=meta.get("max_length", DataConfig().max_length),
        task=meta.get("task", "classification"),
        **columns,
    )


def read_rows(path: Path, cfg: DataConfig) -> pd.DataFrame:
    """The input file, checked for the columns the template reads and for rows with no text."""
    from skray.data.files import read_table

    df = read_table(path)
    needed = [cfg.text_column] + ([cfg.text_pair_column] if cfg.text_pair_column else [])
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: column {missing[0]!r} not found; the template {cfg.template!r} reads column(s) "
            f"{needed} (the run's data.text_column / data.text_pair_column); the file has: "
            f"{', '.join(map(str, df.columns))}"
        )
    if df.empty:
        raise DataError(f"{path}: no rows to predict")
    for column in needed:
        empty = df[column].isna().to_numpy()
        if empty.any():
            first = ", ".join(str(i + 1) for i in empty.nonzero()[0][:5])
            raise DataError(f"{path}: {int(empty.sum())} row(s) with no {column!r} (first: {first}; 1-based rows)")
    return df


def model_input(df: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """The frame ``encode`` reads. Labels are unknown: classification gets a placeholder, token
    classification each word's own index, so the scored positions say which word they belong to."""
    if cfg.task == "token_classification":
        words = df[cfg.text_column].map(lambda ws: ws.split() if isinstance(ws, str) else [str(w) for w in ws])
        frame = pd.DataFrame({"text": words.to_numpy(), "label": words.map(lambda ws: list(range(len(ws)))).to_numpy()})
    else:
        frame = pd.DataFrame({"text": df[cfg.text_column].astype(str).to_numpy(), "label": 0})
    if cfg.text_pair_column:
        frame["text_pair"] = df[cfg.text_pair_column].astype(str).to_numpy()
    return frame


@torch.no_grad()
def class_probs(
    model: torch.nn.Module, encoded: dict[str, torch.Tensor], num_labels: int, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Softmax over the classes per row (rows, C), or per position (rows, T, C) for token
    classification. Rows run sorted by length, so a batch pads little."""
    from skray.data.collate import take

    token_level = encoded["labels"].dim() == 2
    order = torch.argsort(encoded["attention_mask"].sum(1), stable=True)
    probs = torch.zeros(*encoded["labels"].shape[: 2 if token_level else 1], num_labels)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        batch = take(encoded, index)
        p = model(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().softmax(-1).cpu()
        if token_level:
            probs[index, : p.size(1)] = p
        else:
            probs[index] = p
    return probs


def predict_frame(
    model: torch.nn.Module, meta: dict, cfg: DataConfig, df: pd.DataFrame, tokenizer, **batching: Any
) -> pd.DataFrame:
    """The input columns, then ``label`` and ``prob_<label>`` per class; an input column of one of
    those names is kept as ``input_<name>``. Token classification: lists with one entry per word
    (None for words that data.max_length cut off)."""
    from skray.data.collate import IGNORE, encode

    names = meta["label_names"]
    frame = model_input(df, cfg)
    encoded = encode(frame, tokenizer, cfg, add_special_tokens=not model.is_decoder)
    probs = class_probs(model, encoded, len(names), **batching)
    if cfg.task == "token_classification":
        per_word = []
        for row, words in enumerate(frame["label"]):
            at = (encoded["labels"][row] != IGNORE).nonzero()[:, 0].tolist()
            scored = {int(encoded["labels"][row, t]): probs[row, t] for t in at}
            per_word.append([scored.get(w) for w in words])
        label = [[None if p is None else names[int(p.argmax())] for p in ws] for ws in per_word]
        columns = {
            f"prob_{c}": [[None if p is None else float(p[i]) for p in ws] for ws in per_word]
            for i, c in enumerate(names)
        }
    else:
        label = [names[i] for i in probs.argmax(-1).tolist()]
        columns = {f"prob_{c}": probs[:, i].numpy() for i, c in enumerate(names)}
    out = pd.DataFrame({"label": label, **columns}, index=df.index)
    return pd.concat([df.rename(columns={c: f"input_{c}" for c in out.columns if c in df.columns}), out], axis=1)


def default_out(input_path: Path, task: str) -> Path:
    """Beside the input: ``<stem>.predictions.csv`` (``.jsonl`` for token classification: lists per row)."""
    return input_path.with_name(
        f"{input_path.stem}.predictions{'.jsonl' if task == 'token_classification' else '.csv'}"
    )


def tokenizer_of(meta: dict):
    """The tokenizer the run used: the backbone's, padded on the right (as ``load_backbone`` sets it)."""
    from skray.backbones import inspect_backbone

    backbone = BackboneConfig(name=meta["backbone"], trust_remote_code=meta.get("trust_remote_code", False))
    return inspect_backbone(backbone).tokenizer


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return device


def predict(source: str, input_path: str, out: str | None = None, device: str = "auto", batch_size: int = 32) -> Path:
    """Label every row of ``input_path`` with the checkpoint (or a run's best); returns the file written."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: give 1 or more rows per forward pass")
    run_on = pick_device(device)
    path = Path(input_path)
    checkpoint = find_checkpoint(source)
    meta = json.loads((checkpoint / META).read_text())
    cfg = data_config(checkpoint, meta)
    target = Path(out) if out else default_out(path, cfg.task)
    if target.suffix.lower() not in WRITERS:
        raise ConfigError(f"--out {target}: unsupported file type {target.suffix!r} (use .csv, .jsonl or .parquet)")
    df = read_rows(path, cfg)
    model, meta = load_model(checkpoint, run_on)
    print(f"skray: predicting with {checkpoint} (step {meta.get('step', '?')})", file=sys.stderr)
    table = predict_frame(model, meta, cfg, df, tokenizer_of(meta), batch_size=batch_size, device=run_on)
    target.parent.mkdir(parents=True, exist_ok=True)
    WRITERS[target.suffix.lower()](table, target)
    return target
