"""Benchmark of the token-dynamics vector field and a long simulation.

1. dx/dt by one selective scan against the naive O(L²·D) sum over P_{lj}, at
   L = 1024, 4096, 8192 with D = 16, N = 16, batch 1, float64 (both paths, same inputs;
   the scan result is checked against the sum). Goals: scan ≥ 50× faster at L = 4096,
   and scan time(8192)/time(4096) ≤ 2.3.
2. One full 1-D simulation of L = 10,000 tokens to t = 10⁴ (convergent regime), wall time.

Writes results/dynamics.json with provenance. Run: python benchmarks/dynamics.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from tokendyn.dynamics import TokenSystem, classify_trajectory, scan_backend, simulate, vector_field, vector_field_naive
from tokendyn.ops import available_backends
from tokendyn.provenance import provenance

from _timing import median_time  # benchmarks/ is on sys.path when a script runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("results/dynamics.json"))
    ap.add_argument("--lengths", type=int, nargs="*", default=[1024, 4096, 8192])
    ap.add_argument("--sim-tokens", type=int, default=10_000)
    ap.add_argument("--sim-t-end", type=float, default=1e4)
    ap.add_argument("--backend", default="auto")
    args = ap.parse_args()

    torch.manual_seed(0)
    backend = scan_backend(args.backend)
    dtype = torch.float64
    system = TokenSystem.random(16, 16, seed=0)
    rows = []
    for L in args.lengths:
        x = torch.randn(1, L, 16, dtype=dtype)
        vector_field(system, x[:, :64], backend)                      # warm-up
        t_scan, fast = median_time(lambda: vector_field(system, x, backend), 5)
        t_naive, slow = median_time(lambda: vector_field_naive(system, x), 1 if L > 2048 else 2)
        err = float((fast - slow).abs().max() / slow.abs().max())
        rows.append({"L": L, "scan_s": t_scan, "naive_s": t_naive, "speedup": t_naive / t_scan,
                     "max_rel_err": err})
        print(f"L={L}: scan {t_scan * 1e3:.1f} ms, naive {t_naive * 1e3:.1f} ms, "
              f"speedup {t_naive / t_scan:.1f}x, rel err {err:.2e}", flush=True)
    by_L = {r["L"]: r for r in rows}
    goals = {}
    if 4096 in by_L:
        goals["speedup_at_4096"] = by_L[4096]["speedup"]
        goals["speedup_at_4096_ok"] = by_L[4096]["speedup"] >= 50
    if 4096 in by_L and 8192 in by_L:
        ratio = by_L[8192]["scan_s"] / by_L[4096]["scan_s"]
        goals["scan_time_ratio_8192_over_4096"] = ratio
        goals["scan_time_ratio_ok"] = ratio <= 2.3

    # one full 1-D simulation: convergent regime, random tokens
    mu, s, a = -1.0, 1.0, 1.0
    x0 = torch.randn(args.sim_tokens, generator=torch.Generator().manual_seed(1), dtype=dtype)
    t0 = time.perf_counter()
    sim = simulate(TokenSystem.one_dim(mu, s, a), x0, args.sim_t_end, n_points=100, backend=backend,
                   rtol=1e-7, atol=1e-10)
    wall = time.perf_counter() - t0
    regime = classify_trajectory(sim).regime
    print(f"simulation: L={args.sim_tokens} to t={args.sim_t_end:g}: {wall:.1f} s, {sim.n_evals} field "
          f"evaluations, regime {regime}", flush=True)

    result = {
        "provenance": provenance(" ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])),
        "available_backends": available_backends(),
        "scan_backend": backend,
        "dtype": "float64",
        "threads": torch.get_num_threads(),
        "vector_field": {"D": 16, "N": 16, "batch": 1, "rows": rows, "goals": goals},
        "simulation_1d": {"L": args.sim_tokens, "t_end": args.sim_t_end, "mu": mu, "s": s, "a": a,
                          "method": sim.method, "rtol": 1e-7, "atol": 1e-10, "wall_s": wall,
                          "field_evaluations": sim.n_evals, "simulated_regime": regime,
                          "x0": "N(0,1), seed 1"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
