#!/usr/bin/env bash
# The lm-scenarios experiment at full scale on one GPU, then the training-throughput benchmark
# with and without an io_constraint (and the regime monitor's cost).
#
#   bash scripts/lm_scenarios_gpu.sh OUT [--skip-bench] [more lm-scenarios options, e.g. --seeds 0,1,2]
#
# Writes OUT/lm/ (runs and lm_scenarios.*), copies OUT/lm/lm_scenarios.* and the benchmark's
# OUT/train_gpu_constraint.json to OUT, and prints the wall time of each part. Where the
# `bible` program is missing (a machine with no Debian packages installed) it uses a stand-in
# at .gpudata/bin/bible (a script printing the text captured with `bible -f -m 8192
# Gen1:1-Rev22:21`) if there is one, else unpacks .debs/*.deb (bible-kjv, bible-kjv-text; fetch
# them once with `mkdir -p .debs && (cd .debs && apt-get download bible-kjv bible-kjv-text)`).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash scripts/lm_scenarios_gpu.sh OUT [--skip-bench] [lm-scenarios options]}
shift
bench=1
if [ "${1:-}" = "--skip-bench" ]; then bench=0; shift; fi
if ! command -v bible >/dev/null 2>&1; then
    if [ -x .gpudata/bin/bible ]; then
        export PATH="$PWD/.gpudata/bin:$PATH"
    elif ls .debs/*.deb >/dev/null 2>&1; then
        for f in .debs/*.deb; do dpkg -x "$f" /; done
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
mkdir -p "$out"
start=$(date +%s)
"$PY" -m tokendyn train lm-scenarios --scale full --device cuda --no-progress --out "$out/lm" "$@"
echo "lm-scenarios wall time: $(( $(date +%s) - start )) s"
cp "$out"/lm/lm_scenarios* "$out"/
if [ "$bench" = 1 ]; then
    start=$(date +%s)
    "$PY" benchmarks/train_gpu.py --io-constraint positive --skip-peer --skip-chunked --steps 20 \
        --out "$out/train_gpu_constraint.json"
    echo "train_gpu benchmark wall time: $(( $(date +%s) - start )) s"
fi
