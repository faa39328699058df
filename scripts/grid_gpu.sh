#!/usr/bin/env bash
# An experiment's seed grid (tokendyn.experiments: lm-scenarios, reorder, ...) at full scale on one
# GPU, run by run within a wall-time budget, so that a time-limited job (a batch-system slot, a
# lent machine) finishes whole runs and a later call continues where it stopped.
#
#   bash scripts/grid_gpu.sh EXPERIMENT OUT BUDGET_S [RUN ...]
#
# RUN: SETTING-seedK (default: the experiment's grid_runs, its grid settings for each of its default
# seeds, seed by seed, so that a partial grid has every setting). PARALLEL runs (default 1) train at once
# on the GPU, each as its own process in OUT/work/RUN; a complete run moves to
# OUT/EXPERIMENT/runs/RUN, and one found there is skipped. A group of runs starts only when the
# longest group of this call so far (the first: FIRST_RUN_S, default 480) still fits in the budget;
# a run still going when the budget is spent is stopped, and resumes from its last checkpoint at
# the next call. At the end, OUT holds the experiment's summary of every complete run (its JSON,
# markdown and figures), runs.tgz (each complete run's files less its checkpoint and tokenizer)
# and call.json (device, date, commit from $TOKENDYN_COMMIT, command, parallel, the runs this
# call finished with their wall times, "finished"). runs.tgz and call.json are also written after
# every group ("finished": false), so a call stopped from outside still leaves its complete runs in a
# form grid_merge.py takes. `python scripts/grid_merge.py EXPERIMENT FOLDER OUT...`
# merges the runs and call.json of several calls into one results folder and summarises it.
#
# DONE_IN=DIR: also skip every run complete in DIR/runs (a results folder merged from earlier calls,
# copied along), so that a call on a fresh machine needs no list of what is left.
#
# GRID_DEVICE=cpu GRID_SCALE=smoke: a dry run on a machine without a GPU. GRID_CUDA_GRAPH=1: every
# run with --cuda-graph (its optimiser steps as CUDA graphs; part of a run's identity, so a grid
# keeps one mode: runs of the other mode do not resume).
#
# Data on a machine without the Debian packages (`python scripts/pack_data.py` packs .gpudata where
# they are installed): the english corpus (lm-scenarios' full scale) reads .gpudata/pkgroot.tar.xz
# (the packages' files, packed with tar -C ROOT) through TOKENDYN_PACKAGE_ROOT and
# .gpudata/bin/bible (a script printing `bible -f -m 8192 Gen1:1-Rev22:21`) for the KJV;
# Fashion-MNIST (reorder) is $TOKENDYN_FASHION_MNIST, else .gpudata/fashion-mnist (the four IDX files).
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: bash scripts/grid_gpu.sh EXPERIMENT OUT BUDGET_S [RUN ...]"
if [ $# -lt 3 ]; then echo "$usage" >&2; exit 2; fi
exp=$1
out=$2
budget=$3
shift 3
runs=("$@")
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TOKENDYN_CACHE=${TOKENDYN_CACHE:-/tmp/tokendyn-cache}
PY=${PYTHON:-python3}
DEVICE=${GRID_DEVICE:-cuda}
SCALE=${GRID_SCALE:-full}
PARALLEL=${PARALLEL:-1}
graph=()                               # GRID_CUDA_GRAPH=1: every run's steps as CUDA graphs
if [ "${GRID_CUDA_GRAPH:-0}" = 1 ]; then graph=(--cuda-graph); fi
for v in "BUDGET_S=$budget" "PARALLEL=$PARALLEL" "FIRST_RUN_S=${FIRST_RUN_S:-480}"; do
    case "${v#*=}" in
        ''|*[!0-9]*|0) echo "grid_gpu.sh: ${v%%=*} must be a positive whole number, got '${v#*=}'." >&2
                       exit 2 ;;
    esac
done
if [ -n "${DONE_IN:-}" ] && [ ! -d "$DONE_IN/runs" ]; then
    echo "grid_gpu.sh: DONE_IN=$DONE_IN holds no runs/ folder of complete runs." >&2; exit 2
fi
if ! command -v bible >/dev/null 2>&1 && [ -x .gpudata/bin/bible ]; then
    export PATH="$PWD/.gpudata/bin:$PATH"
fi
if [ ! -e /usr/share/dictd/gcide.dict.dz ] && [ -z "${TOKENDYN_PACKAGE_ROOT:-}" ] && [ -f .gpudata/pkgroot.tar.xz ]; then
    mkdir -p /tmp/pkgroot && tar -C /tmp/pkgroot -xJf .gpudata/pkgroot.tar.xz
    export TOKENDYN_PACKAGE_ROOT=/tmp/pkgroot
fi
if [ -z "${TOKENDYN_FASHION_MNIST:-}" ] && [ ! -d /usr/share/datasets/fashion-mnist ] && [ -d .gpudata/fashion-mnist ]; then
    export TOKENDYN_FASHION_MNIST="$PWD/.gpudata/fashion-mnist"
fi
# the description's default runs and result files (an unknown experiment stops here, in one sentence)
described=$("$PY" - "$exp" <<'PY'
import sys
from tokendyn.errors import TokendynError
try:
    from tokendyn.experiments import get
    e = get(sys.argv[1])
except TokendynError as err:
    print(f"grid_gpu.sh: {err}", file=sys.stderr)
    sys.exit(2)
print(" ".join(e.grid_runs))
print(" ".join(e.result_files))
PY
)
if [ ${#runs[@]} -eq 0 ]; then read -r -a runs <<< "$(sed -n 1p <<< "$described")"; fi
read -r -a result_files <<< "$(sed -n 2p <<< "$described")"
mkdir -p "$out/$exp/runs" "$out/work"
device=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
# runs.tgz and call.json, written after every group as well as at the end, so that a call stopped
# from outside (its machine taken back, its slot over) still leaves a record grid_merge.py takes
# ("finished": false until the loop is over).
record_call() {
    (cd "$out/$exp" && find runs -mindepth 2 -maxdepth 2 -type f ! -name tokenizer.json -print0 \
        | tar -czf ../runs.tgz.part --null -T -) && mv "$out/runs.tgz.part" "$out/runs.tgz"
    local joined
    joined=$(IFS=,; echo "${done_runs[*]:-}")
    cat > "$out/call.json.part" <<JSON
{"device": "${device:-unknown}", "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "commit": "${TOKENDYN_COMMIT:-unknown}",
 "command": "bash scripts/grid_gpu.sh $exp $out $budget ${runs[*]}", "budget_s": $budget, "parallel": $PARALLEL,
 "scale": "$SCALE", "cuda_graph": $([ ${#graph[@]} -gt 0 ] && echo true || echo false), "finished": $1,
 "wall_s": $(( $(date +%s) - start )), "runs_wall_s": {$joined}}
JSON
    mv "$out/call.json.part" "$out/call.json"
}
start=$(date +%s)
longest=${FIRST_RUN_S:-480}
done_runs=()
first_group=1
i=0
while [ $i -lt ${#runs[@]} ]; do
    group=()
    while [ ${#group[@]} -lt "$PARALLEL" ] && [ $i -lt ${#runs[@]} ]; do
        run=${runs[$i]}; i=$((i + 1))
        if [ -f "$out/$exp/runs/$run/result.json" ]; then continue; fi
        if [ -n "${DONE_IN:-}" ] && [ -f "$DONE_IN/runs/$run/result.json" ]; then continue; fi
        group+=("$run")
    done
    if [ ${#group[@]} -eq 0 ]; then break; fi
    elapsed=$(( $(date +%s) - start ))
    if [ $(( elapsed + longest )) -gt "$budget" ]; then
        echo "stopping before ${group[*]}: $elapsed s used, the longest group took $longest s, budget $budget s"
        break
    fi
    t=$(date +%s)
    left=$(( budget - elapsed ))        # a run still going then is stopped; the next call resumes it
    pids=()
    for run in "${group[@]}"; do
        setting=${run%-seed*}; seed=${run##*-seed}
        timeout "$left" "$PY" -m tokendyn train "$exp" --scale "$SCALE" --device "$DEVICE" --no-progress \
            --out "$out/work/$run" --settings "$setting" --seeds "$seed" ${graph[@]+"${graph[@]}"} \
            > "$out/work/$run.log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || true; done
    took=$(( $(date +%s) - t ))
    for run in "${group[@]}"; do
        if [ -f "$out/work/$run/runs/$run/result.json" ]; then
            rm -rf "$out/$exp/runs/$run"
            mv "$out/work/$run/runs/$run" "$out/$exp/runs/$run"
            echo "$run: $took s (group of ${#group[@]})"
            done_runs+=("\"$run\": $took")
        else
            echo "$run did not finish; its log: $out/work/$run.log"; tail -3 "$out/work/$run.log"
        fi
    done
    if [ "$took" -gt "$longest" ] || [ "$first_group" -eq 1 ]; then longest=$took; fi
    first_group=0
    record_call false
done
if compgen -G "$out/$exp/runs/*/result.json" > /dev/null; then
    "$PY" -m tokendyn train "$exp" --scale "$SCALE" --summarise-only --out "$out/$exp" > "$out/summary.log" 2>&1 \
        || tail -3 "$out/summary.log"
fi
for f in "${result_files[@]}"; do cp "$out/$exp/$f" "$out/" 2>/dev/null || true; done
record_call true
cat "$out/call.json"
