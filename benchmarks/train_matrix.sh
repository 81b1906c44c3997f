#!/usr/bin/env bash
# `skray train` on the real SmolLM2-135M: SK-Prefix and SK-Prompt x ZeRO 2 and 3, 2 DeepSpeed workers.
# Prints one table; checkpoint_bytes (as in results.csv: the best trained weights + metadata) against the backbone.
# Usage: benchmarks/train_matrix.sh [extra --set overrides]   (12 min 18 s on 2 CPUs, docs/RESULTS.md)
set -euo pipefail
cd "$(dirname "$0")/.."
SKRAY=${SKRAY:-.venv/bin/skray}
PY=${PY:-.venv/bin/python}
out=$(mktemp -d)
for kind in sk_prefix sk_prompt; do
  for stage in 2 3; do
    "$SKRAY" train experiments/quickstart.yaml --set name="matrix-$kind-zero$stage" --set storage_path="$out" \
      --set method.kind=$kind --set train.zero_stage=$stage --set train.max_steps=24 "$@" >/dev/null 2>&1 \
      || echo "FAILED: $kind zero $stage" >&2
  done
done
"$PY" - "$out" <<'PY'
import json, sys
from pathlib import Path
import pandas as pd
from skray import load_results

rows = []
for run in sorted(Path(sys.argv[1]).iterdir()):
    row = load_results(run).iloc[0].to_dict()
    last = json.loads((next(run.glob("*/result.json"))).read_text().splitlines()[-1])
    rows.append({"run": run.name.split("-train-")[0], "zero_stage": last["zero_stage"], "workers": last["world_size"],
                 "status": row["status"], "zero_shot_acc": row["zero_shot_acc"], "test_acc": row["test_acc"],
                 "trainable_params": row["trainable_params"], "samples_per_s": row["samples_per_s"], "peak_mem_mb": row["peak_mem_mb"],
                 "checkpoint_bytes": row["checkpoint_bytes"],
                 "checkpoint_%_of_backbone": 100 * row["checkpoint_bytes"] / last["backbone_bytes"]})
print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"))
PY
