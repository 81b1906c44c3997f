#!/usr/bin/env bash
# SK-Prefix vs PEFT prefix tuning on a ~1B Llama (built from a config), tokens/s and peak memory
# at ZeRO 2 and 3, then SK-Prefix on a ~3B Llama at ZeRO 3, on one GPU without network (sized for
# under 10 minutes, not yet run on one); `tiny` (or no GPU) runs it small.
# Usage: benchmarks/gpu_check.sh [auto|1b|3b|tiny]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" benchmarks/gpu_check.py --size "${1:-auto}"
