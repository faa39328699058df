# Sourced by the grid scripts (lm_scenarios_gpu.sh, reorder_gpu.sh): what a grid run within a
# wall-time budget needs in every such script. The caller sets `runs`, `budget`, `out` and
# `start`, and appends "\"RUN\": SECONDS" to `done_runs` for each run it finishes.

# default_runs "SEEDS" SETTING...: every setting for seed 0, then for seed 1, ..., so that a
# partial grid has every setting
default_runs() {
    local seeds=$1 seed s
    shift
    for seed in $seeds; do for s in "$@"; do runs+=("$s-seed$seed"); done; done
}

# over_budget WHAT LONGEST: true (and says so) when a unit of work that may take LONGEST seconds
# no longer fits in what is left of the budget
over_budget() {
    local elapsed=$(( $(date +%s) - start ))
    if [ $(( elapsed + $2 )) -gt "$budget" ]; then
        echo "stopping before $1: $elapsed s used, the longest took $2 s, budget $budget s"
        return 0
    fi
    return 1
}

# write_call_json SCRIPT [EXTRA_JSON_FIELDS]: OUT/call.json with the device, date, commit
# ($TOKENDYN_COMMIT), command, budget, wall time and the runs this call finished
write_call_json() {
    local device joined
    device=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
    joined=$(IFS=,; echo "${done_runs[*]:-}")
    cat > "$out/call.json" <<JSON
{"device": "${device:-unknown}", "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "commit": "${TOKENDYN_COMMIT:-unknown}",
 "command": "bash $1 $out $budget ${runs[*]}", "budget_s": $budget,${2:+ $2,}
 "wall_s": $(( $(date +%s) - start )), "runs_wall_s": {$joined}}
JSON
    cat "$out/call.json"
}
