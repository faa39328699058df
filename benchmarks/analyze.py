"""Benchmark of ``tokendyn analyze`` at the paper's scale, on the CPU (or ``--device cuda``).

A 24-layer, d_model 768 MambaLM (random weights, about 130M parameters) is saved
as a tokendyn checkpoint and analysed end to end on 1,024 random token ids; the
JSON gets the total time and its parts. In the same run the per-layer spectrum
path (the 2N×2N problem of tokendyn.dynamics.spectrum) is timed against a dense
``torch.linalg.eigvalsh`` of the 1536×1536 symmetric part M_s, and the two are
checked to agree.

    python benchmarks/analyze.py [--out results/analyze.json] [--layers 24] [--tokens 1024] [--device cuda]
                                 [--keep-checkpoint DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _timing import median_time  # benchmarks/ is on sys.path when a script runs

from tokendyn.analysis.analyze import analyze_checkpoint, write_analysis
from tokendyn.analysis.layers import layer_spectrum
from tokendyn.dynamics.spectrum import eigen_signature, symmetric_io_eigvals
from tokendyn.model import MambaConfig, MambaLM
from tokendyn.provenance import provenance


def dense_sym_eigvals(S_B: torch.Tensor, S_C: torch.Tensor) -> torch.Tensor:
    """The peer: all D eigenvalues of M_s = (M + Mᵀ)/2 from the dense D×D matrix (float64)."""
    S_B, S_C = S_B.double(), S_C.double()
    M = S_C.T @ S_B
    return torch.linalg.eigvalsh(0.5 * (M + M.T))


def spectrum_comparison(model, dense_layers: int, repeats: int) -> dict:
    """Median seconds per layer: small path vs dense eigvalsh, and their agreement."""
    params = [layer.mixer.io_parameters() for layer in model.backbone.layers]
    small_t, dense_t, full_t, worst = [], [], [], 0.0
    signatures_agree = True
    for i, p in enumerate(params):
        t, ev_small = median_time(lambda p=p: symmetric_io_eigvals(p["S_B"], p["S_C"]), repeats)
        small_t.append(t)
        full_t.append(median_time(lambda p=p, i=i: layer_spectrum(p, i), 1)[0])
        if i < dense_layers:
            t, ev_dense = median_time(lambda p=p: dense_sym_eigvals(p["S_B"], p["S_C"]), repeats)
            dense_t.append(t)
            scale = float(ev_dense.abs().max())
            tol = 1e-8 * scale
            nz = ev_dense[ev_dense.abs() > tol]
            worst = max(worst, float((ev_small[ev_small.abs() > tol] - nz).abs().max()) / scale)
            sig = eigen_signature(p["S_B"], p["S_C"])
            signatures_agree &= (sig.positive, sig.negative) == (int((nz > 0).sum()), int((nz < 0).sum()))
    small, dense = statistics.median(small_t), statistics.median(dense_t)
    return {
        "d_inner": int(params[0]["S_B"].shape[1]),
        "d_state": int(params[0]["S_B"].shape[0]),
        "small_problem_s_per_layer": small,
        "dense_eigvalsh_s_per_layer": dense,
        "speedup": dense / small,
        "layer_spectrum_s_per_layer": statistics.median(full_t),
        "layers_timed_small": len(small_t),
        "layers_timed_dense": len(dense_t),
        "repeats": repeats,
        "max_rel_eigenvalue_difference": worst,
        "signatures_agree": bool(signatures_agree),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/analyze.json"))
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--dense-layers", type=int, default=4, help="layers on which the dense eigvalsh is timed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--report-dir", type=Path, default=None, help="keep the report here (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu", help="where the model runs: cpu or cuda")
    ap.add_argument("--keep-checkpoint", type=Path, default=None,
                    help="also save the checkpoint here (to run the tokendyn analyze command on it)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    torch.manual_seed(0)
    cfg = MambaConfig(d_model=args.d_model, n_layer=args.layers, vocab_size=50277)
    model = MambaLM(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.layers} layers, d_model {args.d_model}, {n_params / 1e6:.1f}M parameters", flush=True)

    spectrum = spectrum_comparison(model, args.dense_layers, args.repeats)
    print(f"spectrum: {spectrum['small_problem_s_per_layer'] * 1e3:.2f} ms/layer (2N×2N) vs "
          f"{spectrum['dense_eigvalsh_s_per_layer'] * 1e3:.1f} ms/layer (dense eigvalsh): "
          f"{spectrum['speedup']:.0f}×", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        t = time.perf_counter()
        model.save(ckpt)
        save_s = time.perf_counter() - t
        if args.keep_checkpoint:
            model.save(args.keep_checkpoint)
        del model
        report_dir = args.report_dir or Path(tmp) / "report"
        t0 = time.perf_counter()
        analysis = analyze_checkpoint(ckpt, max_tokens=args.tokens, device=args.device)
        t = time.perf_counter()
        paths = write_analysis(analysis, report_dir, provenance=provenance("benchmarks/analyze.py"))
        write_s = time.perf_counter() - t
        total = time.perf_counter() - t0
        report_bytes = {k: Path(p).stat().st_size for k, p in paths.items()}

    parts = {k: round(v, 3) for k, v in analysis.timings.items()}
    # write_analysis times the figure drawing itself; the rest of write_s is PNG/HTML/JSON output
    parts["write_files"] = round(write_s - analysis.timings.get("figures", 0.0), 3)
    result = {
        "benchmark": f"tokendyn analyze, {args.layers}-layer d_model {args.d_model} MambaLM (random weights), "
                     f"model on {args.device}",
        "device": args.device,
        "provenance": provenance("python " + " ".join(["benchmarks/analyze.py", *(argv or sys.argv[1:])])),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # other processes on a shared machine slow small multi-threaded kernels a lot: record the load
        "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "model": {"n_layer": args.layers, "d_model": args.d_model, "d_inner": cfg.d_inner, "d_state": cfg.d_state,
                  "vocab_size": cfg.vocab_size, "n_params": n_params},
        "tokens": args.tokens,
        "input": analysis.input.source,
        "hidden_attention_maps": len(analysis.attention),
        "analyze_total_s": round(total, 3),
        "analyze_parts_s": parts,
        "checkpoint_save_s": round(save_s, 3),
        "report_bytes": report_bytes,
        "spectrum": spectrum,
        "goal_speedup": 20.0,
        "goal_met": spectrum["speedup"] >= 20.0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("analyze_total_s", "analyze_parts_s")}, indent=1))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
