#!/usr/bin/env bash
# The reorder experiment at full scale on one GPU, run by run, within a wall-time budget, so that
# a time-limited job (a batch-system slot, a lent machine) finishes whole runs and a later call
# continues where it stopped.
#
#   bash scripts/reorder_gpu.sh OUT BUDGET_S [RUN ...]
#
# RUN: SETTING-seedK (default: none, authors, hard, tau0.1, tau0.01, gated_none, gated_soft ×
# seeds 0..4, seed by seed, so that a partial grid has every setting). The model is small, so one
# GPU trains PARALLEL runs at once (default 4), each as its own process with its own folder
# OUT/work/RUN; a complete run moves to OUT/reorder/runs/RUN, and one found there is skipped. A group
# of runs starts only when the longest group of this call so far (the first: FIRST_RUN_S, default
# 300) still fits in the budget, and a run still going when the budget is spent is stopped; a
# stopped or interrupted run resumes from its last epoch's checkpoint at the next call. At the end, OUT holds reorder.json, reorder.md and the figures of every complete run in
# OUT/reorder, runs.tgz (each complete run's files less its checkpoint) and call.json (the device,
# date, commit, command and the runs this call finished, with their wall times). Merge the runs.tgz
# of several calls into one folder's runs/ and run
# `tokendyn train reorder --scale full --summarise-only --out FOLDER`.
#
# Fashion-MNIST: $TOKENDYN_FASHION_MNIST, else the Debian package's /usr/share/datasets/fashion-mnist,
# else .gpudata/fashion-mnist in the checkout (copy the four IDX files there first on a machine
# without the package).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash scripts/reorder_gpu.sh OUT BUDGET_S [RUN ...]}
budget=${2:?usage: bash scripts/reorder_gpu.sh OUT BUDGET_S [RUN ...]}
shift 2
runs=("$@")
source scripts/_grid_gpu.sh
if [ ${#runs[@]} -eq 0 ]; then default_runs "0 1 2 3 4" none authors hard tau0.1 tau0.01 gated_none gated_soft; fi
if [ -z "${TOKENDYN_FASHION_MNIST:-}" ] && [ ! -d /usr/share/datasets/fashion-mnist ] && [ -d .gpudata/fashion-mnist ]; then
    export TOKENDYN_FASHION_MNIST="$PWD/.gpudata/fashion-mnist"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${REORDER_DEVICE:-cuda}      # REORDER_DEVICE=cpu REORDER_SCALE=smoke: a dry run elsewhere
SCALE=${REORDER_SCALE:-full}
PARALLEL=${PARALLEL:-4}
mkdir -p "$out/reorder/runs" "$out/work"
start=$(date +%s)
longest=${FIRST_RUN_S:-300}
done_runs=()
i=0
while [ $i -lt ${#runs[@]} ]; do
    group=()
    while [ ${#group[@]} -lt "$PARALLEL" ] && [ $i -lt ${#runs[@]} ]; do
        run=${runs[$i]}; i=$((i + 1))
        if [ ! -f "$out/reorder/runs/$run/result.json" ]; then group+=("$run"); fi
    done
    if [ ${#group[@]} -eq 0 ]; then break; fi
    if over_budget "${group[*]}" "$longest"; then break; fi
    elapsed=$(( $(date +%s) - start ))
    t=$(date +%s)
    pids=()
    left=$(( budget - elapsed ))        # a run still going then is stopped; the next call resumes it
    for run in "${group[@]}"; do
        setting=${run%-seed*}; seed=${run##*-seed}
        timeout "$left" "$PY" -m tokendyn train reorder --scale "$SCALE" --device "$DEVICE" --no-progress --out "$out/work/$run" \
            --settings "$setting" --seeds "$seed" > "$out/work/$run.log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || true; done
    took=$(( $(date +%s) - t ))
    for run in "${group[@]}"; do
        if [ -f "$out/work/$run/runs/$run/result.json" ]; then
            rm -rf "$out/reorder/runs/$run"
            mv "$out/work/$run/runs/$run" "$out/reorder/runs/$run"
            echo "$run: $took s (group of ${#group[@]})"
            done_runs+=("\"$run\": $took")
        else
            echo "$run did not finish; its log: $out/work/$run.log"; tail -3 "$out/work/$run.log"
        fi
    done
    if [ "$took" -gt "$longest" ] || [ ${#done_runs[@]} -le ${#group[@]} ]; then longest=$took; fi
done
if compgen -G "$out/reorder/runs/*/result.json" > /dev/null; then
    "$PY" -m tokendyn train reorder --scale "$SCALE" --summarise-only --out "$out/reorder" > "$out/summary.log" 2>&1 \
        || tail -3 "$out/summary.log"
fi
for f in reorder.json reorder.md reorder.png reorder_sharpness.png; do
    cp "$out/reorder/$f" "$out/" 2>/dev/null || true
done
(cd "$out/reorder" && find runs -mindepth 2 -maxdepth 2 -type f -print0 | tar -czf ../runs.tgz --null -T -)
write_call_json scripts/reorder_gpu.sh "\"parallel\": $PARALLEL"
