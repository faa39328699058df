#!/usr/bin/env bash
# The GPU tests and the three side-by-side benchmarks against mamba_ssm on one GPU: the scan
# (benchmarks/scan_gpu.py), a training step (benchmarks/train_gpu.py) and generation
# (benchmarks/generate_gpu.py).
#
#   bash scripts/gpu_peer_bench.sh OUT [--sweep] [--skip-tests] [--skip-scan] [--skip-train] [--skip-generate]
#
# mamba_ssm (and causal_conv1d, without which MambaLMHeadModel is not a fair peer) must be
# importable, or built first from the sdists in .peer/ by .peer/mamba_ssm_peer.sh (`build`:
# mamba_ssm into /tmp/peer-site, causal_conv1d started in the background into /tmp/peer-conv;
# `wait-conv`: wait for it); the build takes 2-3 minutes for mamba_ssm and about 6 for
# causal_conv1d (in the background, while the scan is timed).
# Writes OUT/gpu_tests.txt, OUT/scan_gpu.json, OUT/train_gpu.json, OUT/generate_gpu.json and
# prints the wall time of each part.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash scripts/gpu_peer_bench.sh OUT [--sweep] [--skip-tests|--skip-scan|--skip-train|--skip-generate]}
shift
sweep="" tests=1 scan=1 train=1 gen=1
for a in "$@"; do
    case "$a" in
        --sweep) sweep="--sweep" ;;
        --skip-tests) tests=0 ;;
        --skip-scan) scan=0 ;;
        --skip-train) train=0 ;;
        --skip-generate) gen=0 ;;
        *) echo "unknown option $a"; exit 2 ;;
    esac
done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
commit=${TOKENDYN_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_peer_bench.sh needs a CUDA device and PyTorch built for it; none was found."
    exit 2
fi
mkdir -p "$out"
have() { "$PY" -c "import $1" >/dev/null 2>&1; }
if ! have mamba_ssm && [ -x .peer/mamba_ssm_peer.sh ]; then
    start=$(date +%s)
    bash .peer/mamba_ssm_peer.sh build || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/peer-site"
    echo "mamba_ssm build: $(( $(date +%s) - start )) s"
fi
if [ "$tests" = 1 ]; then
    start=$(date +%s)
    "$PY" -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/gpu_tests.txt" | tail -15
    echo "GPU tests: $(( $(date +%s) - start )) s"
fi
if [ "$scan" = 1 ]; then
    start=$(date +%s)
    "$PY" benchmarks/scan_gpu.py $sweep --skip-chunked-above 0 --commit "$commit" --out "$out/scan_gpu.json" 2>&1 | tail -20
    echo "scan benchmark: $(( $(date +%s) - start )) s"
fi
if [ "$train" = 1 ] && ! have causal_conv1d && [ -x .peer/mamba_ssm_peer.sh ]; then
    start=$(date +%s)
    bash .peer/mamba_ssm_peer.sh wait-conv && export PYTHONPATH="$PYTHONPATH:/tmp/peer-conv"
    echo "waited for causal_conv1d: $(( $(date +%s) - start )) s"
fi
if [ "$train" = 1 ]; then
    start=$(date +%s)
    "$PY" benchmarks/train_gpu.py --skip-chunked --cuda-graph --commit "$commit" --out "$out/train_gpu.json" 2>&1 | tail -12
    echo "train benchmark: $(( $(date +%s) - start )) s"
fi
if [ "$gen" = 1 ]; then
    start=$(date +%s)
    "$PY" benchmarks/generate_gpu.py --commit "$commit" --out "$out/generate_gpu.json" 2>&1 | tail -20
    echo "generate benchmark: $(( $(date +%s) - start )) s"
fi
