"""The GPU grid script (scripts/grid_gpu.sh) in its CPU dry run at the smoke scale, for both
experiments: whole runs within the budget, PARALLEL runs at once, a second call skipping what is
done, the summary, runs.tgz and call.json."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _grid_command(exp: str, out: Path, budget: int, runs: list[str], tmp_path: Path, **env) -> dict:
    """subprocess keyword arguments of one grid_gpu.sh call in its CPU dry run."""
    env = {**os.environ, "PYTHON": sys.executable, "TOKENDYN_COMMIT": "abc123", "GRID_DEVICE": "cpu",
           "GRID_SCALE": "smoke", "TOKENDYN_CACHE": str(tmp_path / "cache"), **env}
    return {"args": ["bash", str(ROOT / "scripts" / "grid_gpu.sh"), exp, str(out), str(budget), *runs],
            "cwd": ROOT, "env": env}


def _grid(exp: str, out: Path, budget: int, runs: list[str], tmp_path: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(**_grid_command(exp, out, budget, runs, tmp_path, **env), capture_output=True, text=True,
                          timeout=600)


def test_lm_grid_dry_run(tmp_path):
    out = tmp_path / "g"
    proc = _grid("lm-scenarios", out, 600, ["none-seed0"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    call = json.loads((out / "call.json").read_text())
    assert call["commit"] == "abc123" and list(call["runs_wall_s"]) == ["none-seed0"] and call["parallel"] == 1
    assert call["cuda_graph"] is False and call["finished"] is True
    assert call["command"].startswith("bash scripts/grid_gpu.sh lm-scenarios") and call["scale"] == "smoke"
    with tarfile.open(out / "runs.tgz") as tar:
        names = tar.getnames()
    assert "runs/none-seed0/result.json" in names
    assert not any("checkpoint" in n or n.endswith("tokenizer.json") for n in names)
    assert json.loads((out / "lm_scenarios.json").read_text())["settings"]["none"]
    # a second call skips the finished run; one whose longest run cannot fit stops before it
    again = _grid("lm-scenarios", out, 600, ["none-seed0"], tmp_path)
    assert again.returncode == 0 and json.loads((out / "call.json").read_text())["runs_wall_s"] == {}
    short = _grid("lm-scenarios", tmp_path / "h", 5, ["none-seed0"], tmp_path, FIRST_RUN_S="100")
    assert short.returncode == 0 and "stopping before none-seed0" in short.stdout
    assert json.loads((tmp_path / "h" / "call.json").read_text())["runs_wall_s"] == {}


def test_a_call_stopped_from_outside_keeps_its_complete_runs(tmp_path):
    """A call killed mid-grid (its machine taken back) has already written runs.tgz and call.json for
    the runs it finished, marked unfinished, so grid_merge.py can take them."""
    hang = tmp_path / "python"          # the interpreter, except that seed 1's training never ends
    hang.write_text(f'#!/bin/sh\ncase " $* " in *" --seeds 1 "*) exec sleep 600;; esac\nexec {sys.executable} "$@"\n')
    hang.chmod(0o755)
    out = tmp_path / "g"
    proc = subprocess.Popen(**_grid_command("lm-scenarios", out, 900, ["none-seed0", "none-seed1"], tmp_path,
                                            PYTHON=str(hang)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "call.json").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
        assert proc.poll() is None, "the grid ended instead of waiting on its second run"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    call = json.loads((out / "call.json").read_text())
    assert call["finished"] is False and list(call["runs_wall_s"]) == ["none-seed0"]
    with tarfile.open(out / "runs.tgz") as tar:
        assert "runs/none-seed0/result.json" in tar.getnames()
    assert not (out / "runs.tgz.part").exists() and not (out / "call.json.part").exists()


def test_reorder_grid_dry_run_in_parallel(tmp_path):
    out = tmp_path / "r"
    proc = _grid("reorder", out, 600, ["none-seed0", "authors-seed0"], tmp_path, PARALLEL="2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    call = json.loads((out / "call.json").read_text())
    assert call["parallel"] == 2 and sorted(call["runs_wall_s"]) == ["authors-seed0", "none-seed0"]
    assert (out / "reorder.json").is_file() and (out / "runs.tgz").is_file()
    assert sorted(p.name for p in (out / "reorder" / "runs").iterdir()) == ["authors-seed0", "none-seed0"]


def test_runs_complete_in_a_merged_folder_are_skipped(tmp_path):
    """DONE_IN: a fresh OUT skips the runs that a results folder (merged from earlier calls)
    already holds complete; a folder without runs/ is refused in one sentence."""
    done = tmp_path / "merged" / "runs" / "none-seed0"
    done.mkdir(parents=True)
    (done / "result.json").write_text("{}")
    out = tmp_path / "m"
    proc = _grid("reorder", out, 600, ["none-seed0", "authors-seed0"], tmp_path, DONE_IN=str(tmp_path / "merged"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list(json.loads((out / "call.json").read_text())["runs_wall_s"]) == ["authors-seed0"]
    bad = _grid("reorder", tmp_path / "n", 600, ["none-seed0"], tmp_path, DONE_IN=str(tmp_path / "nothing"))
    assert bad.returncode == 2 and "holds no runs/ folder" in bad.stderr and bad.stderr.strip().count("\n") == 0


def test_graphed_runs_are_asked_of_every_run(tmp_path):
    """GRID_CUDA_GRAPH=1 gives every run --cuda-graph (on the CPU dry run: refused in one
    sentence, and no run completes) and call.json says so."""
    out = tmp_path / "c"
    proc = _grid("lm-scenarios", out, 600, ["none-seed0"], tmp_path, GRID_CUDA_GRAPH="1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    call = json.loads((out / "call.json").read_text())
    assert call["cuda_graph"] is True and call["runs_wall_s"] == {}
    assert "--cuda-graph needs one CUDA device" in (out / "work" / "none-seed0.log").read_text()


def test_an_unknown_experiment_is_one_sentence(tmp_path):
    proc = _grid("nonsense", tmp_path / "x", 600, [], tmp_path)
    assert proc.returncode == 2 and "unknown experiment 'nonsense'" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr


def test_the_default_runs_come_from_the_description(tmp_path):
    from tokendyn.experiments import get

    proc = _grid("reorder", tmp_path / "d", 1, [], tmp_path, FIRST_RUN_S="100")
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = json.loads((tmp_path / "d" / "call.json").read_text())["command"].split()[5:]
    exp = get("reorder")
    assert runs == exp.grid_runs
    assert len(runs) == 35 and runs[:2] == ["none-seed0", "authors-seed0"]


@pytest.mark.parametrize("args, env, fragment", [
    (["reorder", "OUT"], {}, "usage: bash scripts/grid_gpu.sh"),
    (["reorder", "OUT", "abc"], {}, "BUDGET_S must be a positive whole number, got 'abc'"),
    (["reorder", "OUT", "60"], {"PARALLEL": "0"}, "PARALLEL must be a positive whole number"),
    (["reorder", "OUT", "60"], {"FIRST_RUN_S": "-1"}, "FIRST_RUN_S must be a positive whole number"),
])
def test_bad_arguments_are_one_sentence(tmp_path, args, env, fragment):
    args = [str(tmp_path / "o") if a == "OUT" else a for a in args]
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "grid_gpu.sh"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})
    assert proc.returncode == 2 and fragment in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not (tmp_path / "o").exists()
