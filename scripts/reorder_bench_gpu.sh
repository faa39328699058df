#!/usr/bin/env bash
# The soft/hard reordering benchmark at L = 256..16384 on one CUDA GPU (the experiment itself runs
# with scripts/grid_gpu.sh reorder).
#
#   bash scripts/reorder_bench_gpu.sh OUT
#
# OUT/reorder_bench.json  results/reorder_bench.json with its "cuda" entry added
# OUT/log.txt             everything printed
set -euo pipefail
OUT=${1:?usage: bash scripts/reorder_bench_gpu.sh OUT}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
# for a dry run elsewhere: REORDER_DEVICE=cpu REORDER_LENGTHS="256 1024"
DEVICE=${REORDER_DEVICE:-cuda}
LENGTHS=${REORDER_LENGTHS:-256 1024 4096 16384}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
{
  echo "== $(date -u +%FT%TZ) reorder benchmark"
  t0=$SECONDS
  if [ -f results/reorder_bench.json ] && [ ! -f "$OUT/reorder_bench.json" ]; then
    cp results/reorder_bench.json "$OUT/reorder_bench.json"     # keep the committed CPU entry
  fi
  # shellcheck disable=SC2086
  $PY benchmarks/reorder.py --device "$DEVICE" --repeats 10 --lengths $LENGTHS --out "$OUT/reorder_bench.json"
  echo "benchmark: $((SECONDS - t0)) s"
} 2>&1 | tee -a "$OUT/log.txt"
