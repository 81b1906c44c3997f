"""What the untrained SK model answers, label by label: the start SK-Tuning builds on.

For an experiment's data and wording, the SK-Prefix model at step 0 with m = k (the wording read as
text, the backbone's own zero-shot answer) scores the validation and test rows through the verbalizer,
once per set of label words. Printed per split: accuracy beside the majority label, how often each
label is predicted against how often it is true, the confusion matrix, and the accuracy after
contextual calibration (each label's mean log-probability over the rows subtracted), which says
whether a per-label bias alone would fix the start.

    python benchmarks/zero_shot_confusion.py experiments/verdict_tweets.yaml \
        --words " negative, neutral, positive" " bad, okay, good"

One process, no Ray; a minute or two on 2 CPU cores for SmolLM2 and a few hundred rows.
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from skray.backbones import load_backbone
from skray.config import load_config
from skray.data import load_splits
from skray.data.collate import encode
from skray.methods import build_model
from skray.predict import class_probs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument(
        "--words", nargs="+", help="label word sets, comma-separated in label order (default: the config's words)"
    )
    args = parser.parse_args()
    cfg = load_config(args.config)
    splits = load_splits(cfg.data)
    names = splits.label_names
    tokenizer = load_backbone(cfg.backbone).tokenizer
    k = len(tokenizer(cfg.method.wording, add_special_tokens=False)["input_ids"])
    rows = {s: encode(splits[s], tokenizer, cfg.data, add_special_tokens=False) for s in ("validation", "test")}
    word_sets = [dict(zip(names, ws.split(","), strict=True)) for ws in args.words] if args.words else [None]
    table = []
    for words in word_sets:
        method = cfg.method.model_copy(update={"kind": "sk_prefix", "adapter": "mixer", "prefix_length": k})
        if words:
            method = method.model_copy(update={"label_words": words})
        model = build_model(load_backbone(cfg.backbone), method, names).eval()
        shown = "/".join((method.label_words or {n: " " + n for n in names})[n].strip() for n in names)
        for split, r in rows.items():
            y = r["labels"]
            with torch.no_grad():
                probs = class_probs(model, r, len(names), batch_size=32, device=torch.device("cpu"))
            pred = probs.argmax(-1)
            logp = probs.log()
            calibrated = (logp - logp.mean(0)).argmax(-1)
            table.append(
                {
                    "words": shown,
                    "split": split,
                    "rows": len(y),
                    "acc": (pred == y).float().mean().item(),
                    "majority_acc": torch.bincount(y).max().item() / len(y),
                    "calibrated_acc": (calibrated == y).float().mean().item(),
                    "predicted": torch.bincount(pred, minlength=len(names)).tolist(),
                    "true": torch.bincount(y, minlength=len(names)).tolist(),
                }
            )
            confusion = pd.crosstab(pd.Series(y, name="true"), pd.Series(pred, name="predicted")).reindex(
                index=range(len(names)), columns=range(len(names)), fill_value=0
            )
            confusion.index, confusion.columns = names, names
            print(f"\n{shown}, {split} (rows: true label, columns: predicted)\n{confusion}")
    print(f"\nlabels {names}; wording {cfg.method.wording!r} ({k} tokens, m = k)\n")
    print(pd.DataFrame(table).to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
