"""scripts/grid_merge.py: the runs and call.json of several grid_gpu.sh calls (CPU dry runs at the
smoke scale) merged into one results folder and summarised; a run already there is kept; and the
errors, each in one sentence with nothing written."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from test_grid_scripts import _grid

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "grid_merge.py"


def _merge(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_two_calls_merge_into_one_summary(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out, run in ((a, "none-seed0"), (b, "positive-seed0")):
        proc = _grid("lm-scenarios", out, 600, [run], tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    results = tmp_path / "results"
    res = _merge("lm-scenarios", results, a, b)
    assert res.returncode == 0, res.stderr
    assert "added 2 run(s): none-seed0 positive-seed0" in res.stdout
    doc = json.loads((results / "lm_scenarios.json").read_text())
    assert sorted(doc["settings"]) == ["none", "positive"] and doc["config"]["scale"] == "smoke"
    calls = sorted(p.name for p in (results / "calls").iterdir())
    assert len(calls) == 2 and all(c.startswith("call_") and c.endswith(".json") for c in calls)
    # merged again: the runs are kept as they were, no call is written twice
    before = (results / "runs" / "none-seed0" / "result.json").read_bytes()
    again = _merge("lm-scenarios", results, a)
    assert again.returncode == 0 and "kept as they were: none-seed0" in again.stdout
    assert (results / "runs" / "none-seed0" / "result.json").read_bytes() == before
    assert len(list((results / "calls").iterdir())) == 2


def _call_folder(folder: Path, members: dict[str, bytes], call: dict | str) -> Path:
    folder.mkdir(parents=True)
    with tarfile.open(folder / "runs.tgz", "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (folder / "call.json").write_text(call if isinstance(call, str) else json.dumps(call))
    return folder


CALL = {"date": "2026-12-07T08:00:00Z", "scale": "full"}


@pytest.mark.parametrize("make,words", [
    (lambda d: d.mkdir(), "holds no call.json"),
    (lambda d: _call_folder(d, {"runs/x/result.json": b"{}"}, "not json"), "is not a JSON file"),
    (lambda d: _call_folder(d, {"runs/x/result.json": b"{}"}, {"scale": "full"}), "no date or scale"),
    (lambda d: _call_folder(d, {"../evil": b"x"}, CALL), "outside runs/NAME/"),
    (lambda d: (d.mkdir(), (d / "call.json").write_text(json.dumps(CALL)), (d / "runs.tgz").write_text("no")),
     "not a readable tar.gz"),
])
def test_a_bad_call_folder_is_one_sentence_and_writes_nothing(tmp_path, make, words):
    make(tmp_path / "call")
    res = _merge("lm-scenarios", tmp_path / "results", tmp_path / "call")
    assert res.returncode == 1 and words in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr
    assert not (tmp_path / "results").exists()


def test_calls_of_two_scales_and_bad_arguments_are_refused(tmp_path):
    one = _call_folder(tmp_path / "one", {"runs/x/result.json": b"{}"}, CALL)
    two = _call_folder(tmp_path / "two", {"runs/y/result.json": b"{}"}, {**CALL, "scale": "smoke"})
    res = _merge("lm-scenarios", tmp_path / "results", one, two)
    assert res.returncode == 1 and "different scales" in res.stderr and not (tmp_path / "results").exists()
    res = _merge("no-such-experiment", tmp_path / "results", one)
    assert res.returncode == 1 and res.stderr.startswith("grid_merge.py: ") and res.stderr.strip().count("\n") == 0
    assert _merge("lm-scenarios").returncode == 2
