#!/usr/bin/env bash
# SK-Prefix vs PEFT prefix tuning on a ~1B Llama (built from a config), tokens/s and peak memory
# at ZeRO 2 and 3, on one GPU without network in under 8 minutes; `tiny` (or no GPU) runs it small.
# Usage: benchmarks/gpu_check.sh [auto|1b|tiny]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" benchmarks/gpu_check.py --size "${1:-auto}"
