"""The GPU results files of benchmarks/train_gpu.py and scan_gpu.py (benchmarks/_device_runs.py):
one run per device, an earlier run of the same device replaced (its rows kept under earlier_rows),
scan rows naming their device, the one-run layout of older files taken in."""

from __future__ import annotations

import json

import pytest
from bench_helpers import load_benchmark


def _bench():
    return load_benchmark("_device_runs")


def _merge(bench, path, run):
    return bench.merge(bench.load(path), run, bench.train_rows)


def _run(device, date, ratio):
    return {"device": device, "date": date, "commit": "abc", "command": "python benchmarks/train_gpu.py",
            "tokens_per_s_ratio": ratio, "peak_mem_ratio": 0.9, "results": {"tokendyn_triton": {}}}


def test_one_row_per_device(tmp_path):
    bench = _bench()
    path = tmp_path / "train_gpu.json"
    path.write_text(json.dumps(_run("H200", "2026-12-01", 1.08)))          # the one-run layout
    first = _merge(bench, path, _run("H100", "2026-12-05", 0.92))
    assert [(r["device"], r["tokens_per_s_ratio"]) for r in first["rows"]] == [("H200", 1.08), ("H100", 0.92)]
    assert first["device"] == "H200, H100" and first["date"] == "2026-12-05"
    assert set(bench.TRAIN_ROW_KEYS) <= set(first["rows"][0]) and first["runs"][1]["results"]
    path.write_text(json.dumps(first))
    again = _merge(bench, path, _run("H100", "2026-12-06", 1.01))
    assert [(r["device"], r["tokens_per_s_ratio"]) for r in again["rows"]] == [("H200", 1.08), ("H100", 1.01)]
    assert [(r["date"], r["tokens_per_s_ratio"]) for r in again["earlier_rows"]] == [("2026-12-05", 0.92)]
    path.write_text(json.dumps(again))
    third = _merge(bench, path, _run("H100", "2026-12-07", 1.19))
    assert [r["date"] for r in third["earlier_rows"]] == ["2026-12-05", "2026-12-06"]
    assert first["earlier_rows"] == []
    assert _merge(bench, tmp_path / "none.json", _run("H100", "d", 1.0))["device"] == "H100"


def test_scan_rows_name_their_device_and_the_command_line_merges(tmp_path, capsys):
    bench = _bench()
    path = tmp_path / "scan_gpu.json"
    old = {"device": "H200", "date": "2026-12-03", "commit": "c1", "rows": [{"shape": [1], "ratio_fwd": 1.4}]}
    path.write_text(json.dumps(old))                                          # the one-run layout
    new = tmp_path / "new.json"
    new.write_text(json.dumps(bench.merge({}, {**old, "device": "H100", "date": "2026-12-07"}, bench.scan_rows)))
    bench.main(["scan", str(path), str(new)])
    doc = json.loads(path.read_text())
    assert [(r["device"], r["ratio_fwd"]) for r in doc["rows"]] == [("H200", 1.4), ("H100", 1.4)]
    assert doc["earlier_rows"] == [] and doc["date"] == "2026-12-07" and "H100" in capsys.readouterr().out
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(SystemExit, match="holds no run"):
        bench.main(["scan", str(path), str(tmp_path / "empty.json")])


def test_graph_ratios_only_where_both_ran():
    bench = load_benchmark("train_gpu")
    assert bench.graph_ratios({"mamba_ssm": {"tokens_per_s": 100.0, "peak_mem_gib": 10.0}}) == {}
    r = bench.graph_ratios({"mamba_ssm": {"tokens_per_s": 100.0, "peak_mem_gib": 10.0},
                            "tokendyn_triton_graph": {"tokens_per_s": 125.0, "peak_mem_gib": 9.0}})
    assert r == {"graph_tokens_per_s_ratio": 1.25, "graph_peak_mem_ratio": 0.9}


def test_graph_benchmark_runs_eager_on_the_cpu(tmp_path):
    """benchmarks/train_graph_gpu.py's bookkeeping on a tiny model (--modes eager: --cuda-graph
    needs a GPU)."""
    bench = load_benchmark("train_graph_gpu")
    out = tmp_path / "g.json"
    assert bench.main(["--modes", "eager", "--device", "cpu", "--d-model", "16", "--n-layer", "1", "--vocab", "64",
                       "--context", "16", "--batch", "2", "--steps", "20", "--skip", "10", "--rounds", "1",
                       "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["ms_per_step"]["eager"] > 0 and data["ratio_graph_over_eager"] is None
    for key in ("device", "date", "commit", "command"):
        assert key in data["provenance"]
