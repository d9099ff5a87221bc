#!/usr/bin/env bash
# The GPU record: a CUDA smoke test of the library, then the pool and model benchmarks on the current GPU.
# Usage (from the repository root, on a machine with CUDA and torch): bash benchmarks/gpu_record.sh OUTDIR
set -euo pipefail
OUT=${1:-runs/gpu}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 benchmarks/cuda_smoke.py 2>&1 | tee "$OUT/smoke.log"
python3 -m temde bench pool --device cuda --out "$OUT/pool.json" --repeats 10 2>&1 | tee "$OUT/pool.log"
python3 -m temde bench model --device cuda --out "$OUT/model.json" 2>&1 | tee "$OUT/model.log"
