"""The GPU grid scripts (scripts/lm_scenarios_gpu.sh, scripts/reorder_gpu.sh) in their CPU dry run
at the smoke scale: whole runs within the budget, the summary, runs.tgz and call.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(script: str, out: Path, budget: int, runs: list[str], env: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "TOKENDYN_COMMIT": "abc123", **env}
    return subprocess.run(["bash", str(ROOT / "scripts" / script), str(out), str(budget), *runs], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


def test_lm_grid_script_dry_run(tmp_path):
    env = {"LM_DEVICE": "cpu", "LM_SCALE": "smoke", "TOKENDYN_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "g"
    proc = _run("lm_scenarios_gpu.sh", out, 600, ["none-seed0"], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    call = json.loads((out / "call.json").read_text())
    assert call["commit"] == "abc123" and list(call["runs_wall_s"]) == ["none-seed0"]
    assert call["command"].startswith("bash scripts/lm_scenarios_gpu.sh")
    with tarfile.open(out / "runs.tgz") as tar:
        names = tar.getnames()
    assert "runs/none-seed0/result.json" in names and not any("checkpoint" in n for n in names)
    assert json.loads((out / "lm_scenarios.json").read_text())["settings"]["none"]
    # a second call skips the finished run; one whose longest run cannot fit stops before it
    again = _run("lm_scenarios_gpu.sh", out, 600, ["none-seed0"], env)
    assert again.returncode == 0 and json.loads((out / "call.json").read_text())["runs_wall_s"] == {}
    short = _run("lm_scenarios_gpu.sh", tmp_path / "h", 5, ["none-seed0"], {**env, "FIRST_RUN_S": "100"})
    assert short.returncode == 0 and "stopping before none-seed0" in short.stdout
    assert json.loads((tmp_path / "h" / "call.json").read_text())["runs_wall_s"] == {}


def test_reorder_grid_script_dry_run(tmp_path):
    env = {"REORDER_DEVICE": "cpu", "REORDER_SCALE": "smoke", "PARALLEL": "2"}
    out = tmp_path / "r"
    proc = _run("reorder_gpu.sh", out, 600, ["none-seed0", "authors-seed0"], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    call = json.loads((out / "call.json").read_text())
    assert call["parallel"] == 2 and sorted(call["runs_wall_s"]) == ["authors-seed0", "none-seed0"]
    assert (out / "reorder.json").is_file() and (out / "runs.tgz").is_file()
