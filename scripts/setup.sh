#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine with Python 3.11: the built-in data
# (Debian packages), a virtual environment in .venv, the CPU build of PyTorch
# pinned to the release on this machine's disk, and tokendyn with its test extras.
# Safe to run again: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -e /usr/share/datasets/fashion-mnist ] || ! command -v bible >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bible-kjv dataset-fashion-mnist >/dev/null
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import tokendyn, torch, pytest, transformers" >/dev/null 2>&1; then
    .venv/bin/pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
    .venv/bin/pip install -q "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
    .venv/bin/pip install -q -e ".[test,bench]" 2>&1 | grep -v "is ignored" || true
    .venv/bin/python -c "import tokendyn, torch, pytest, transformers"
fi
