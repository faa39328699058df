#!/usr/bin/env bash
# The lm-scenarios grid at full scale on one GPU, run by run, within a wall-time budget, so
# that a time-limited job (a batch-system slot, a lent machine) finishes whole runs and a later
# call continues where it stopped.
#
#   bash scripts/lm_scenarios_gpu.sh OUT BUDGET_S [RUN ...]
#
# RUN: SETTING-seedK (default: none, positive, negative, mixed × seeds 0, 1, 2, seed by seed, so
# that a partial grid has every setting). A run whose result.json is in OUT/lm/runs is skipped. A
# run starts only when the longest run of this call so far (the first: FIRST_RUN_S, default
# 480, about one full-scale run on an H100) still fits in the budget. At the end, OUT holds lm_scenarios.json/.md of every complete
# run in OUT/lm, runs.tgz (each complete run's files less its checkpoint) and call.json (the
# device, date, commit, command and the runs this call finished, with their wall times).
#
# The full scale trains on the built-in english corpus (tokendyn.data.debian_text). Where its
# Debian packages are not installed, .gpudata/pkgroot.tar.xz (their files, packed once with
# tar -C ROOT) is unpacked and read through TOKENDYN_PACKAGE_ROOT; where the `bible` program is
# missing, .gpudata/bin/bible (a script printing `bible -f -m 8192 Gen1:1-Rev22:21`) stands in.
# LM_DEVICE=cpu LM_SCALE=smoke make a dry run on a machine without a GPU. The helpers shared with
# reorder_gpu.sh are in scripts/_grid_gpu.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash scripts/lm_scenarios_gpu.sh OUT BUDGET_S [RUN ...]}
budget=${2:?usage: bash scripts/lm_scenarios_gpu.sh OUT BUDGET_S [RUN ...]}
shift 2
runs=("$@")
source scripts/_grid_gpu.sh
if [ ${#runs[@]} -eq 0 ]; then default_runs "0 1 2" none positive negative mixed; fi
if ! command -v bible >/dev/null 2>&1 && [ -x .gpudata/bin/bible ]; then
    export PATH="$PWD/.gpudata/bin:$PATH"
fi
if [ ! -e /usr/share/dictd/gcide.dict.dz ] && [ -z "${TOKENDYN_PACKAGE_ROOT:-}" ] && [ -f .gpudata/pkgroot.tar.xz ]; then
    mkdir -p /tmp/pkgroot && tar -C /tmp/pkgroot -xJf .gpudata/pkgroot.tar.xz
    export TOKENDYN_PACKAGE_ROOT=/tmp/pkgroot
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TOKENDYN_CACHE=${TOKENDYN_CACHE:-/tmp/tokendyn-cache}
PY=${PYTHON:-python3}
DEVICE=${LM_DEVICE:-cuda}          # LM_DEVICE=cpu LM_SCALE=smoke: a dry run elsewhere
SCALE=${LM_SCALE:-full}
mkdir -p "$out/lm/runs"
start=$(date +%s)
longest=${FIRST_RUN_S:-480}
done_runs=()
for run in "${runs[@]}"; do
    setting=${run%-seed*}; seed=${run##*-seed}
    if [ -f "$out/lm/runs/$run/result.json" ]; then continue; fi
    if over_budget "$run" "$longest"; then break; fi
    t=$(date +%s)
    "$PY" -m tokendyn train lm-scenarios --scale "$SCALE" --device "$DEVICE" --no-progress --out "$out/lm" \
        --settings "$setting" --seeds "$seed"
    took=$(( $(date +%s) - t ))
    echo "$run: $took s"
    done_runs+=("\"$run\": $took")
    if [ "$took" -gt "$longest" ] || [ ${#done_runs[@]} -eq 1 ]; then longest=$took; fi
done
cp "$out"/lm/lm_scenarios.json "$out"/lm/lm_scenarios.md "$out"/ 2>/dev/null || true
(cd "$out/lm" && find runs -mindepth 2 -maxdepth 2 -type f ! -name tokenizer.json -print0 \
    | tar -czf ../runs.tgz --null -T -)
write_call_json scripts/lm_scenarios_gpu.sh
