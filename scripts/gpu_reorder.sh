#!/usr/bin/env bash
# The token-reordering GPU run: the full-scale experiment (4 settings x 3 seeds on Fashion-MNIST)
# and the soft/hard benchmark at L = 256..16384, on one CUDA GPU.
#
#   bash scripts/gpu_reorder.sh OUT [FASHION_MNIST_DIR]
#
# OUT/reorder.json, reorder.md, reorder.png  the experiment's summary (its 12 run directories
#                                            stay in $REORDER_WORK, default /tmp/tokendyn-reorder)
# OUT/reorder_bench.json                     results/reorder_bench.json with its "cuda" entry added
# OUT/log.txt                                everything printed
# FASHION_MNIST_DIR: the four IDX files (default: $TOKENDYN_FASHION_MNIST, else the Debian package's
# /usr/share/datasets/fashion-mnist, else .gpudata/fashion-mnist in the checkout: on a machine
# without the package, copy the files there first, e.g.
#   mkdir -p .gpudata/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz .gpudata/fashion-mnist/
# ). Run again with the same REORDER_WORK to finish an interrupted run: complete runs are skipped.
set -euo pipefail
OUT=${1:?usage: bash scripts/gpu_reorder.sh OUT [FASHION_MNIST_DIR]}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
WORK=${REORDER_WORK:-/tmp/tokendyn-reorder}
# for a dry run elsewhere: REORDER_DEVICE=cpu REORDER_SCALE=smoke REORDER_SEEDS=0 REORDER_LENGTHS="256 1024"
DEVICE=${REORDER_DEVICE:-cuda}
SCALE=${REORDER_SCALE:-full}
SEEDS=${REORDER_SEEDS:-0,1,2}
LENGTHS=${REORDER_LENGTHS:-256 1024 4096 16384}
mkdir -p "$OUT"
if [ -n "${2:-}" ]; then
  export TOKENDYN_FASHION_MNIST=$2
elif [ -z "${TOKENDYN_FASHION_MNIST:-}" ] && [ ! -d /usr/share/datasets/fashion-mnist ] \
     && [ -d "$ROOT/.gpudata/fashion-mnist" ]; then
  export TOKENDYN_FASHION_MNIST="$ROOT/.gpudata/fashion-mnist"
fi
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
{
  echo "== $(date -u +%FT%TZ) reorder experiment, $SCALE scale, $DEVICE"
  t0=$SECONDS
  $PY -m tokendyn train reorder --scale "$SCALE" --seeds "$SEEDS" --out "$WORK" --device "$DEVICE" --no-progress
  cp "$WORK"/reorder.json "$WORK"/reorder.md "$WORK"/reorder.png "$OUT"/
  echo "experiment: $((SECONDS - t0)) s"
  echo "== $(date -u +%FT%TZ) reorder benchmark"
  t0=$SECONDS
  if [ -f results/reorder_bench.json ] && [ ! -f "$OUT/reorder_bench.json" ]; then
    cp results/reorder_bench.json "$OUT/reorder_bench.json"     # keep the committed CPU entry
  fi
  # shellcheck disable=SC2086
  $PY benchmarks/reorder.py --device "$DEVICE" --repeats 10 --lengths $LENGTHS --out "$OUT/reorder_bench.json"
  echo "benchmark: $((SECONDS - t0)) s"
} 2>&1 | tee -a "$OUT/log.txt"
