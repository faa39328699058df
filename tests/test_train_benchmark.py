"""benchmarks/train_gpu.py's results file: one row per device (its run kept beside it), an
earlier run of the same device replaced, the one-run layout of older files taken in."""

from __future__ import annotations

import json

from bench_helpers import load_benchmark


def _bench():
    return load_benchmark("train_gpu")


def _run(device, date, ratio):
    return {"device": device, "date": date, "commit": "abc", "command": "python benchmarks/train_gpu.py",
            "tokens_per_s_ratio": ratio, "peak_mem_ratio": 0.9, "results": {"tokendyn_triton": {}}}


def test_one_row_per_device(tmp_path):
    bench = _bench()
    path = tmp_path / "train_gpu.json"
    path.write_text(json.dumps(_run("H200", "2026-12-01", 1.08)))          # the one-run layout
    first = bench.merge_device_row(path, _run("H100", "2026-12-05", 0.92))
    assert [(r["device"], r["tokens_per_s_ratio"]) for r in first["rows"]] == [("H200", 1.08), ("H100", 0.92)]
    assert first["device"] == "H200, H100" and first["date"] == "2026-12-05"
    assert set(bench.ROW_KEYS) <= set(first["rows"][0]) and first["runs"][1]["results"]
    path.write_text(json.dumps(first))
    again = bench.merge_device_row(path, _run("H100", "2026-12-06", 1.01))
    assert [(r["device"], r["tokens_per_s_ratio"]) for r in again["rows"]] == [("H200", 1.08), ("H100", 1.01)]
    assert bench.merge_device_row(tmp_path / "none.json", _run("H100", "d", 1.0))["device"] == "H100"


def test_graph_ratios_only_where_both_ran():
    bench = _bench()
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
