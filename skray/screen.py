"""The zero-shot wording screen: before any training, score every candidate wording through the same
SK model at step 0 (the frozen model reading it, the adapter at its start) on the validation rows,
and keep the best for the search. A wording costs one evaluation instead of a trial.

Whether screening pays is task-specific: after the sweep, ``screen_correlation`` gives the Spearman
correlation between each wording's screen score and its best trained score, and the report says it.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from skray import storage
from skray.config import ExperimentConfig, selection_metric
from skray.errors import ConfigError


def score_wordings(experiment: dict) -> list[dict]:
    """Each wording's step-0 validation scores, the backbone loaded once (a Ray task runs this)."""
    from skray.backbones import load_backbone
    from skray.data import load_splits
    from skray.data.collate import encode
    from skray.methods import build_model
    from skray.train.evaluate import evaluate

    cfg = ExperimentConfig.model_validate(experiment)
    device = torch.device("cuda" if cfg.train.use_gpu else "cpu")
    splits = load_splits(cfg.data)
    backbone = load_backbone(cfg.backbone)
    backbone.model.to(device)
    rows = encode(splits["validation"], backbone.tokenizer, cfg.data, add_special_tokens=not backbone.is_decoder)
    scores = []
    for wording in cfg.search.wordings:
        method = cfg.method.model_copy(update={"wording": wording})
        model = build_model(backbone, method, splits.label_names).to(device)
        with torch.no_grad():
            got = evaluate(
                model,
                rows,
                batch_size=cfg.train.eval_batch_size,
                rank=0,
                world=1,
                device=device,
                label_names=splits.label_names,
            )
        scores.append({"wording": wording, **{f"screen_{k}": v for k, v in got.items() if k != "loss"}})
    return scores


def run_screen(cfg: ExperimentConfig, run_dir: str, cpus: float) -> list[str]:
    """Score the wordings in one Ray task (on a GPU when the run trains on GPUs), write screen.csv
    (best first) and return the ``search.screen.keep`` best."""
    import ray

    if cfg.method.head != "verbalizer":
        raise ConfigError(
            "search.screen scores wordings at step 0, where only the verbalizer head means anything (a linear "
            "head starts at random); set method.head verbalizer or remove search.screen"
        )
    key = f"screen_{selection_metric(cfg.data.task, cfg.train.select_by)}"
    task = ray.remote(score_wordings).options(num_cpus=cpus, num_gpus=1 if cfg.train.use_gpu else 0)
    table = pd.DataFrame(ray.get(task.remote(cfg.model_dump())))
    table = table.sort_values(key, ascending=False, kind="stable").reset_index(drop=True)
    table["kept"] = table.index < cfg.search.screen.keep
    storage.write_text(storage.join(run_dir, "screen.csv"), table.to_csv(index=False))
    kept = table[table["kept"]]
    print(
        f"skray: screen: {len(table)} wordings scored zero-shot on validation; kept the best "
        f"{len(kept)} ({key.removeprefix('screen_')} {kept[key].min():.3f}-{kept[key].max():.3f} of "
        f"{table[key].min():.3f}-{table[key].max():.3f}), RUN_DIR/screen.csv",
        flush=True,
    )
    return kept["wording"].tolist()


def screen_correlation(trials: pd.DataFrame, run_dir: str, key: str) -> str | None:
    """One line: the Spearman correlation between the kept wordings' screen scores and their best
    trained validation scores, read honestly (None without a screen or with fewer than 3 wordings)."""
    path = storage.join(run_dir, "screen.csv")
    if not storage.exists(path):
        return None
    import io

    screen = pd.read_csv(io.StringIO(storage.read_text(path)))
    trained = trials.dropna(subset=[f"best_val_{key}"]).groupby("wording")[f"best_val_{key}"].max()
    both = screen.set_index("wording")[f"screen_{key}"].to_frame().join(trained, how="inner")
    if len(both) < 3:
        return f"screen: {len(both)} wordings were both screened and trained; too few for a correlation"
    rho = both.corr(method="spearman").iloc[0, 1]
    if math.isnan(rho):
        return "screen: the scores do not vary, so no correlation"
    reading = (
        "the screen ranked them as training did: screening paid"
        if rho >= 0.5
        else "the screen's ranking says little about trained accuracy here: screening did not clearly pay"
    )
    return (
        f"screen: Spearman correlation {rho:.2f} between {len(both)} wordings' zero-shot and best trained "
        f"validation {key}; {reading}"
    )
