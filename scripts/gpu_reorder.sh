#!/usr/bin/env bash
# The token-reordering GPU run: the full-scale experiment (4 settings x 3 seeds on Fashion-MNIST)
# and the soft/hard benchmark at L = 256..16384, on one CUDA GPU.
#
#   bash scripts/gpu_reorder.sh OUT [FASHION_MNIST_DIR]
#
# OUT/reorder/{reorder.json,reorder.md,reorder.png}  the experiment (runs in OUT/reorder/runs)
# OUT/reorder_bench.json                              results/reorder_bench.json with its "cuda" entry added
# OUT/log.txt                                         everything printed
# FASHION_MNIST_DIR: the four IDX files (default: $TOKENDYN_FASHION_MNIST, else the Debian package's
# /usr/share/datasets/fashion-mnist). Run again with the same OUT to finish an interrupted run.
set -euo pipefail
OUT=${1:?usage: bash scripts/gpu_reorder.sh OUT [FASHION_MNIST_DIR]}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
mkdir -p "$OUT"
if [ -n "${2:-}" ]; then export TOKENDYN_FASHION_MNIST=$2; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
{
  echo "== $(date -u +%FT%TZ) reorder experiment, full scale"
  t0=$SECONDS
  $PY -m tokendyn train reorder --scale full --out "$OUT/reorder" --device cuda --no-progress
  echo "experiment: $((SECONDS - t0)) s"
  echo "== $(date -u +%FT%TZ) reorder benchmark"
  t0=$SECONDS
  if [ -f results/reorder_bench.json ] && [ ! -f "$OUT/reorder_bench.json" ]; then
    cp results/reorder_bench.json "$OUT/reorder_bench.json"     # keep the committed CPU entry
  fi
  $PY benchmarks/reorder.py --device cuda --repeats 10 --out "$OUT/reorder_bench.json"
  echo "benchmark: $((SECONDS - t0)) s"
} 2>&1 | tee -a "$OUT/log.txt"
