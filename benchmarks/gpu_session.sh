#!/usr/bin/env bash
# The open GPU checks, most needed first, each with its own time limit so that a slow one cannot
# starve the rest of a short device lease (15 minutes so far, start-up included). For a machine with
# a CUDA torch but no Ray and no package index: skray's other wheels come from $WHEELS, SmolLM2's
# config and tokenizer (no weights needed) and the quickstart's rows as a CSV from $ASSETS.
# Logs go to $OUT (the device tool's folder) or ./gpu-out; each check prints its result lines.
#
#   WHEELS=.whl ASSETS=.gpu bash benchmarks/gpu_session.sh
#
# 1. packed against solo on SmolLM2, pack auto choosing the seats (docs/SCALING.md: the ratio after
#    the probe and per-layer fixes, never measured on a GPU); 2. where a solo configuration's time
#    goes (--profile, short); 3. the 1.1B slot of 16 at ZeRO 3 in bf16, 48 steps.
set -u
out=${OUT:-gpu-out}
wheels=${WHEELS:-.whl}
assets=${ASSETS:-.gpu}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl \
    > "$out/pip.log" 2>&1 || { echo "pip: see $out/pip.log"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

check() {  # name, seconds, gpu_packing.py's arguments
    local name=$1 limit=$2
    shift 2
    timeout "$limit" python3 benchmarks/gpu_packing.py --backbone "$assets/smollm2" --data "$assets/rt_critics.csv" "$@" \
        > "$out/$name.log" 2>&1
    echo "$name: exit $?"
    grep -E '^\{|^\||pack auto|profile: wall|Error' "$out/$name.log" | tail -n 12
}

check packing 240 --packs 16 32 --auto --solo 2
check profile 120 --packs 2 --solo 1 --steps 12 --eval-every 12 --profile
check zero3_1b 200 --shape 1b --set train.zero_stage=3 --packs 16 --solo 1
