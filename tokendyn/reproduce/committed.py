"""The GPU results committed under ``results/`` (each JSON file records the device,
commit, date and command it came from), as tables for the main job's report.

Only files measured on a GPU are shown; the CPU benchmarks are the README's. The
folder is found beside the package in a checkout; an installed copy has none and the
report says so.
"""

from __future__ import annotations

import json
from pathlib import Path

TITLES = {
    "scan_gpu": "Selective scan: triton against mamba_ssm",
    "scan_gpu_recheck": "Selective scan: triton against mamba_ssm (re-timing)",
    "conv_gpu": "Causal conv + SiLU: fused Triton against PyTorch's conv1d",
    "train_gpu": "Training MambaLM: tokens/s against mamba_ssm",
    "train_gpu_recheck": "Training MambaLM: tokens/s against mamba_ssm (second run)",
    "scan_gpu_abf7e00": "Selective scan: triton against mamba_ssm (before the segments)",
    "scan_gpu_6c1fac1": "Selective scan: triton against mamba_ssm (the previous launch defaults)",
    "generate_gpu": "Generation: tokens/s against mamba_ssm's generate(cg=True)",
    "profile_train_gpu": "One training step by part",
    "host_overhead_gpu": "Host time per call of the fused ops",
    "analyze_cuda": "tokendyn analyze on a 129M model",
    "core_h100_quick": "Main job, section core (quick scale)",
    "core_h100_full": "Main job, section core (full scale)",
    "train_gpu_constraint": "Training MambaLM with io_constraint against without",
    "ssd_gpu": "Mamba-2 (SSD) scan: triton (and chunked, where timed) against mamba_ssm's Triton SSD",
    "ssd_triton_tuning": "Mamba-2 (SSD) scan: the triton backend's tile variants",
    "train_graph_gpu": "Training steps: eager against --cuda-graph (lm-scenarios full-scale model)",
    "train_graph_reorder_gpu": "Training steps: eager against --cuda-graph (reorder full-scale classifier)",
}
# Earlier measurements of what a newer file measures again: kept in results/ for the record, listed on
# the page in one line each rather than as tables.
SUPERSEDED = {
    "scan_gpu_recheck": "scan_gpu",
    "scan_gpu_abf7e00": "scan_gpu",
    "scan_gpu_6c1fac1": "scan_gpu",
    "train_gpu_recheck": "train_gpu",
    "scan_gpu_a89b737": "scan_gpu",
    "ssd_gpu_6a4d49c": "ssd_gpu",
    "ssd_gpu_80b21a5": "ssd_gpu",
    "ssd_gpu_a89b737": "ssd_gpu",
}


def results_dir() -> Path | None:
    """The checkout's results/ folder, or None in an installed copy."""
    path = Path(__file__).resolve().parents[2] / "results"
    return path if path.is_dir() else None


def _f(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e3 else f"{v:,.0f}"
    return str(v)


def _shape(row: dict) -> str:
    shape = row["shape"]
    return "(" + ", ".join(str(x) for x in (shape.values() if isinstance(shape, dict) else shape)) + ")"


def _row_provenance(rows: list[dict], keys: tuple[str, ...]):
    """(columns, row -> cells): where a results file gathers rows of several runs (devices,
    commits), ``keys`` lead every row, commits shortened to 7 characters; nothing where no row
    names ``keys[0]``."""
    if not any(keys[0] in r for r in rows):
        return [], lambda r: []
    return list(keys), lambda r: [str(r.get(k) or "")[:7] if k == "commit" else r.get(k) for k in keys]


SSD_CONTENDERS = ("chunked", "triton", "mamba_ssm")


def _ssd(d: dict, this: dict):
    """One row per shape and dtype: each contender's forward and forward+backward ms and peak
    memory, the ratios to mamba_ssm, and whether every output and gradient passed its check; where
    the rows come from several calls, each row's commit leads it."""
    names = [n for n in SSD_CONTENDERS if any(isinstance(r.get(n), dict) for r in d["rows"])]
    lead_cols, lead = _row_provenance(d["rows"], ("commit",))
    cols = lead_cols + ["(batch, L, heads, head_dim, state, groups)", "dtype", "check"]
    for label in ("fwd", "fwd+bwd"):
        cols += [f"{label} ms {n}" for n in names]
        cols += [f"{label} {n} / mamba_ssm" for n in names if n != "mamba_ssm" and "mamba_ssm" in names]
    cols += [f"peak GiB {n}" for n in names]
    rows = []
    for r in d["rows"]:
        if "error" in r:
            rows.append(lead(r) + [_shape(r), r["dtype"], r["error"]] + ["-"] * (len(cols) - 3 - len(lead_cols)))
            continue
        row = lead(r) + [_shape(r), r["dtype"], "pass" if r.get("check", {}).get("ok") else "FAIL"]
        for mode in ("fwd", "fwdbwd"):
            row += [_f(r.get(n, {}).get(f"{mode}_ms")) for n in names]
            peer = r.get("mamba_ssm", {}).get(f"{mode}_ms")
            row += [_f(r[n][f"{mode}_ms"] / peer) if peer and r.get(n, {}).get(f"{mode}_ms") else "-"
                    for n in names if n != "mamba_ssm" and "mamba_ssm" in names]
        row += [_f(r.get(n, {}).get("peak_mem_fwdbwd_gib")) for n in names]
        rows.append(row)
    return cols, rows


def _ssd_variants(d: dict, this: dict):
    """The defaults and mamba_ssm of the same call (``with_peer``, an ssd_gpu.py result), then
    each variant."""
    cols = ["variant", "(batch, L, heads, head_dim, state, groups) dtype", "fwd ms", "fwd+bwd ms"]
    rows = []
    for r in (d.get("with_peer") or {}).get("rows", []):
        for name, label in (("triton", "defaults"), ("mamba_ssm", "mamba_ssm")):
            if isinstance(r.get(name), dict):
                t = r[name]
                rows.append([label, f"{_shape(r)} {r['dtype']}", _f(t.get("fwd_ms")), _f(t.get("fwdbwd_ms"))])
    return cols, rows + [[v, shape, _f(t.get("fwd_ms")), _f(t.get("fwdbwd_ms"))]
                         for v, by_shape in d["variants"].items() for shape, t in by_shape.items()]


def _graph(d: dict, this: dict):
    ms, rounds = d["ms_per_step"], d.get("rounds_ms", {})
    rows = [[mode, _f(v), ", ".join(_f(x) for x in rounds.get(mode, []))] for mode, v in ms.items()]
    if d.get("ratio_graph_over_eager") is not None:
        rows.append(["graph / eager", _f(d["ratio_graph_over_eager"]), ""])
    return ["mode", "ms per step (median over rounds)", "rounds"], rows


def _scan(d: dict, this: dict):
    """One row per shape and dtype; where the file holds several devices' runs, each row's device
    and commit lead it."""
    lead_cols, lead = _row_provenance(d["rows"], ("device", "commit"))
    cols = lead_cols + [
        "(batch, dim, length, state)", "dtype", "fwd ms tokendyn", "fwd ms mamba_ssm", "fwd ratio",
        "fwd+bwd ms tokendyn", "fwd+bwd ms mamba_ssm", "fwd+bwd ratio"]
    return cols, [lead(r) + [
        _shape(r), r["dtype"], _f(r["tokendyn_fwd_ms"]), _f(r.get("mamba_ssm_fwd_ms")), _f(r.get("ratio_fwd")),
        _f(r["tokendyn_fwdbwd_ms"]), _f(r.get("mamba_ssm_fwdbwd_ms")), _f(r.get("ratio_fwdbwd"))] for r in d["rows"]]


def _generate(d: dict, this: dict):
    cols = ["batch", "tokens/s tokendyn (CUDA graph)", "tokens/s mamba_ssm cg=True", "ratio",
            "tokens/s tokendyn eager", "graph tokens = eager tokens"]
    return cols, [[_f(r["batch"]), _f(r.get("tokens_per_s")), _f(r.get("mamba_ssm_cg_tokens_per_s")),
                   _f(r.get("ratio_tokens_per_s")), _f(r.get("tokendyn_eager_tokens_per_s")),
                   _f(r.get("graph_tokens_equal_eager"))] for r in d["rows"]]


def _conv(d: dict, this: dict):
    cols = ["(batch, dim, length, width)", "dtype", "fwd ms fused", "fwd ms conv1d", "fwd speed-up",
            "fwd+bwd speed-up"]
    return cols, [[_shape(r), r["dtype"], _f(r["fused_fwd_ms"]), _f(r["torch_fwd_ms"]), _f(r["speedup_fwd"]),
                   _f(r["speedup_fwdbwd"])] for r in d["rows"]]


def _train(d: dict, this: dict):
    cols = ["model", "ms/step (median)", "tokens/s", "× mamba_ssm", "peak GiB"]
    return cols, [[k, _f(r.get("step_ms_median")), _f(r.get("tokens_per_s")), _f(r.get("throughput_vs_mamba_ssm")),
                   _f(r.get("peak_mem_gib"))] for k, r in d["results"].items()]


def _train_devices(d: dict, this: dict):
    cols = ["device", "date", "commit", "tokens/s × mamba_ssm", "peak memory × mamba_ssm",
            "--cuda-graph: tokens/s ×", "--cuda-graph: peak ×"]
    return cols, [[r.get("device"), (r.get("date") or "")[:10], (r.get("commit") or "")[:7],
                   _f(r.get("tokens_per_s_ratio")), _f(r.get("peak_mem_ratio")),
                   _f(r.get("graph_tokens_per_s_ratio")), _f(r.get("graph_peak_mem_ratio"))] for r in d["rows"]]


def _profile(d: dict, this: dict):
    cols = ["model", "GPU kernel ms/step", "host enqueue ms/step", "wall ms/step"]
    return cols, [[k, _f(r.get("kernel_ms_per_step")), _f(r.get("host_enqueue_ms_per_step")),
                   _f(r.get("wall_ms_per_step_one_sync"))] for k, r in d["results"].items()]


def _host(d: dict, this: dict):
    return ["call", "µs per call"], [[k, _f(v)] for k, v in d["us_per_call"].items()]


def _analyze(d: dict, this: dict):
    rows = [["total", _f(d["analyze_total_s"])]] + [[k, _f(v)] for k, v in d.get("analyze_parts_s", {}).items()]
    return ["part", "seconds"], rows


def _core(d: dict, this: dict):
    """Beside the committed numbers, this run's for the same backend when the scales match."""
    same_scale = this.get("scale") and f"--scale {this['scale']}" in (d["provenance"].get("command") or "")
    mine = this.get("core_backends") if same_scale else None
    cols = ["backend", "rel. diff vs float64", "forward ms (median)"]
    if mine:
        cols += [f"this run: rel. diff vs float64 ({this['device']})", "this run: forward ms"]
    rows = []
    for k, r in d["backends"].items():
        row = [k, f"{r['max_rel_diff_vs_float64']:.2e}", _f(r["forward_ms_median"])]
        if mine:
            m = mine.get(k)
            row += [f"{m['max_rel_diff_vs_float64']:.2e}", _f(m["forward_ms_median"])] if m else ["not run", "-"]
        rows.append(row)
    return cols, rows


def _scalars(d: dict, this: dict):
    return ["quantity", "value"], [[k, _f(v)] for k, v in d.items() if isinstance(v, (int, float, str))
                                   and k not in ("device", "date", "commit", "command", "torch", "python")]


CONV_CONTENDERS = ("fused_taps", "fused_cols", "fused_recompute", "torch", "causal_conv1d")


def _conv_contenders(d: dict, this: dict):
    """conv_gpu.json with one entry per contender and row: kernel ms forward / forward+backward."""
    names = [n for n in CONV_CONTENDERS if any(n in r for r in d["rows"])]
    cols = ["(batch, dim, length, width)", "dtype"] + [f"{n} fwd / fwd+bwd ms" for n in names]
    return cols, [[_shape(r), r["dtype"]] + [f"{_f(r[n]['fwd_ms'])} / {_f(r[n]['fwdbwd_ms'])}" if n in r else ""
                                            for n in names] for r in d["rows"]]


def _norm(d: dict, this: dict):
    """norm_gpu.json: the Add -> RMSNorm -> in_proj node, Triton against PyTorch, per shape."""
    cols = ["(batch, L, d_model, in_proj outputs)", "fwd+bwd kernel ms triton / torch",
            "fwd+bwd event ms triton / torch", "kernel ratio", "event ratio"]
    return cols, [[_shape(r), f"{_f(r['triton']['fwdbwd_kernel_ms'])} / {_f(r['torch']['fwdbwd_kernel_ms'])}",
                   f"{_f(r['triton']['fwdbwd_event_ms'])} / {_f(r['torch']['fwdbwd_event_ms'])}",
                   _f(r["ratio_fwdbwd_kernel_triton_over_torch"]), _f(r["ratio_fwdbwd_event_triton_over_torch"])]
                  for r in d["rows"]]


def _table_for(d: dict):
    if isinstance(d.get("rows"), list) and d["rows"] and "tokendyn_fwd_ms" in d["rows"][0]:
        return _scan
    if isinstance(d.get("rows"), list) and d["rows"] and all(isinstance(r, dict) and "dtype" in r for r in d["rows"]) \
            and any(isinstance(r.get(n), dict) for r in d["rows"] for n in SSD_CONTENDERS):
        return _ssd
    if isinstance(d.get("variants"), dict):
        return _ssd_variants
    if isinstance(d.get("ms_per_step"), dict):
        return _graph
    if isinstance(d.get("rows"), list) and d["rows"] and "fused_fwd_ms" in d["rows"][0]:
        return _conv
    if isinstance(d.get("rows"), list) and d["rows"] and isinstance(d["rows"][0].get("fused_taps"), dict):
        return _conv_contenders
    if isinstance(d.get("rows"), list) and d["rows"] and "floor_norm_fwd_ms" in d["rows"][0]:
        return _norm
    if isinstance(d.get("rows"), list) and d["rows"] and "mamba_ssm_cg_tokens_per_s" in d["rows"][0]:
        return _generate
    if isinstance(d.get("rows"), list) and d["rows"] and "tokens_per_s_ratio" in d["rows"][0]:
        return _train_devices
    res = d.get("results")
    if isinstance(res, dict) and res and all(isinstance(v, dict) for v in res.values()):
        first = next(iter(res.values()))
        if "step_ms_median" in first:
            return _train
        if "kernel_ms_per_step" in first:
            return _profile
    if "us_per_call" in d:
        return _host
    if "analyze_total_s" in d:
        return _analyze
    if "backends" in d and "provenance" in d:
        return _core
    return _scalars


def committed_results(this: dict | None = None, folder: Path | None = None) -> list[dict]:
    """One table per committed GPU result: {file, title, device, commit, date, command, columns, rows,
    superseded_by}; ``superseded_by`` names the newer file of an earlier measurement (else None).
    An experiment's summary (lm_scenarios.json, reorder.json) is left out: its section shows it.

    this: what this run measured that a committed table can stand beside
    ({"scale", "device", "core_backends"}).
    """
    folder = folder or results_dir()
    if folder is None:
        return []
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(d, dict):
            continue
        prov = d.get("provenance") if isinstance(d.get("provenance"), dict) else d
        device = prov.get("device")
        if not isinstance(device, str) or device.lower().startswith("cpu"):
            continue
        if "settings" in d and "comparisons" in d:          # an experiment's summary: shown in its section
            continue
        columns, rows = _table_for(d)(d, this or {})
        newer = SUPERSEDED.get(path.stem)
        out.append({"file": f"results/{path.name}", "title": TITLES.get(path.stem, path.stem), "device": device,
                    "commit": prov.get("commit"), "date": prov.get("date"), "command": prov.get("command"),
                    "commit_note": prov.get("commit_note"), "columns": columns, "rows": rows,
                    "superseded_by": f"results/{newer}.json" if newer else None})
    return out
