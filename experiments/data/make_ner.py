"""Write a small synthetic NER file (IOB2 tags: PER, LOC, ORG) for tests and quick trials.

    python experiments/data/make_ner.py OUT.jsonl [--rows 600] [--seed 0]

Each line is {"tokens": [...], "tags": [...]}: the shape skray's token classification reads
(data.task: token_classification, data.text_column: tokens, data.label_column: tags).
Sentences come from templates filled with names, so labels are exact and the file is the same
for the same seed on every machine.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ENTITIES = {
    "PER": ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Maria", "John Smith", "Wei Zhang", "Amina Yusuf", "Carlos"],
    "LOC": ["Paris", "New York", "Lagos", "Kyoto", "the Alps", "Buenos Aires", "Berlin", "Lake Tahoe"],
    "ORG": [
        "Acme Corp",
        "the United Nations",
        "Ray Labs",
        "Globex",
        "the Red Cross",
        "Initech",
        "OpenWorks",
        "Umbrella Inc",
    ],
}
TEMPLATES = [
    "{PER} moved to {LOC} last year .",
    "{PER} works for {ORG} in {LOC} .",
    "{ORG} opened an office in {LOC} .",
    "Yesterday {PER} met {PER} at {ORG} .",
    "The weather in {LOC} was cold .",
    "{ORG} hired {PER} as an engineer .",
    "Nobody expected the news .",
    "{PER} visited {LOC} and {LOC} .",
]


def sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    tokens, tags = [], []
    for word in rng.choice(TEMPLATES).split():
        kind = word.strip("{}") if word.startswith("{") else None
        if kind is None:
            tokens.append(word)
            tags.append("O")
            continue
        for i, part in enumerate(rng.choice(ENTITIES[kind]).split()):
            tokens.append(part)
            tags.append(("B-" if i == 0 else "I-") + kind)
    return tokens, tags


def write(path: str | Path, rows: int = 600, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for _ in range(rows):
            tokens, tags = sentence(rng)
            f.write(json.dumps({"tokens": tokens, "tags": tags}) + "\n")
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(write(args.out, args.rows, args.seed))
