#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine with Python 3.11: the built-in data and
# a headless browser for the report tests (Debian packages), a virtual environment in
# .venv, the CPU build of PyTorch pinned to 2.13.0, and tokendyn with its test and
# benchmark extras.
# Safe to run again: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
# chromium: the headless browser tests/test_report_browser.py opens the report pages in;
# dict-gcide, python3.11-doc, linux-doc-6.1, perl-doc: the english corpus beside the Bible
# (tokendyn/data/debian_text.py), which the full scale of lm-scenarios trains on
PACKAGES="bible-kjv dataset-fashion-mnist chromium dict-gcide python3.11-doc linux-doc-6.1 perl-doc"
if [ ! -e /usr/share/datasets/fashion-mnist ] || ! command -v bible >/dev/null 2>&1 \
        || ! command -v chromium >/dev/null 2>&1 || [ ! -e /usr/share/dictd/gcide.dict.dz ] \
        || [ ! -d /usr/share/doc/python3.11/html/_sources ] || [ ! -d /usr/share/doc/linux-doc-6.1/Documentation ] \
        || [ ! -d /usr/share/perl/5.36.0/pod ]; then
    echo "setup: installing Debian packages $PACKAGES"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    # wait up to 10 minutes for another apt or dpkg (e.g. unattended upgrades) to release its lock
    LOCK="-o DPkg::Lock::Timeout=600"
    # shellcheck disable=SC2086
    $SUDO apt-get $LOCK update -qq
    # shellcheck disable=SC2086
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get $LOCK install -y -qq $PACKAGES >/dev/null
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import tokendyn, torch, pytest, transformers, threadpoolctl" >/dev/null 2>&1 || [ ! -x .venv/bin/ruff ]; then
    echo "setup: installing Python packages into .venv (log: .venv/setup.log)"
    {
        .venv/bin/pip install --upgrade pip
        # torch pinned: 2.13.0 is the CPU build available locally; a bare 'torch' would pull a CUDA build.
        .venv/bin/pip install "torch==2.13.0"
        .venv/bin/pip install -e ".[test,bench]"
    } > .venv/setup.log 2>&1 || { tail -30 .venv/setup.log; echo "setup: pip install failed (see .venv/setup.log)"; exit 1; }
    .venv/bin/python -c "import tokendyn, torch, pytest, transformers"
fi
