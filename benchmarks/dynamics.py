"""Benchmark of the token-dynamics vector field and a long simulation.

1. dx/dt by one selective scan against the naive O(L²·D) sum over P_{lj}, at
   L = 1024, 4096, 8192 with D = 16, N = 16, batch 1, float64 (both paths, same inputs;
   the scan result is checked against the sum). Goals: scan ≥ 50× faster at L = 4096,
   and scan time(8192)/time(4096) ≤ 2.3.
2. One full 1-D simulation of L = 10,000 tokens to t = 10⁴ (convergent regime), wall time.
3. D > 1: the random D = 16, N = 16 system (seed 0) with 10 tokens N(0,1) (seed 1) to t = 10⁴,
   as ``tokendyn simulate --random --dim 16 --state 16 --tokens 10 --t-end 10000`` runs it,
   with this tree's integrator and, in the same run, with the integrator of an older commit
   (default 930a3be), exported by ``git archive`` and run in a subprocess. Goal: ≤ 30 s.

Writes results/dynamics.json with provenance. Run: python benchmarks/dynamics.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _timing import median_time  # benchmarks/ is on sys.path when a script runs

from tokendyn.dynamics import TokenSystem, classify_trajectory, simulate, vector_field, vector_field_naive
from tokendyn.ops import available_backends, resolve_backend
from tokendyn.provenance import provenance

# The D > 1 case, as a script that runs against whichever tokendyn is first on the path.
_D16_CASE = """
import json, sys, time, torch
from tokendyn.dynamics import TokenSystem, classify_trajectory, simulate
system = TokenSystem.random(16, 16, 0)
x0 = torch.randn(10, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
t0 = time.perf_counter()
sim = simulate(system, x0, 1e4)
wall = time.perf_counter() - t0
got = classify_trajectory(sim)
print(json.dumps({"wall_s": wall, "field_evaluations": sim.n_evals, "method": sim.method,
                  "simulated_regime": got.regime, "t_reached": sim.t_end,
                  "blowup_times": [float(v) for v in sim.blowup_times[0]],
                  "final_norms": [float(v) for v in sim.norms[-1, 0]], "info": {k: v for k, v in sim.info.items()
                  if isinstance(v, (int, float, str, type(None)))}}))
"""


def d16_case(commit: str | None, timeout: float) -> dict:
    """Run the D > 1 case in a subprocess: this tree (commit None) or an exported old commit."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        src = str(root)
        if commit is not None:
            archive = subprocess.run(["git", "-C", src, "archive", commit], check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            src = tmp
        env = {**os.environ, "PYTHONPATH": src}
        t0 = time.perf_counter()
        try:
            res = subprocess.run([sys.executable, "-c", _D16_CASE], env=env, capture_output=True, text=True,
                                 timeout=timeout, cwd=tmp)
        except subprocess.TimeoutExpired:
            return {"commit": commit, "wall_s": None, "timed_out_after_s": timeout}
        if res.returncode != 0:
            return {"commit": commit, "error": res.stderr.strip().splitlines()[-1:],
                    "wall_s_process": time.perf_counter() - t0}
        out = json.loads(res.stdout.strip().splitlines()[-1])
        return {"commit": commit or "this tree", **out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("results/dynamics.json"))
    ap.add_argument("--lengths", type=int, nargs="*", default=[1024, 4096, 8192])
    ap.add_argument("--sim-tokens", type=int, default=10_000)
    ap.add_argument("--sim-t-end", type=float, default=1e4)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--old-commit", default="930a3be", help="commit whose integrator is timed beside this one")
    ap.add_argument("--old-timeout", type=float, default=1200.0)
    args = ap.parse_args()

    torch.manual_seed(0)
    backend = resolve_backend(args.backend, "cpu")
    dtype = torch.float64
    system = TokenSystem.random(16, 16, seed=0)
    rows = []
    for L in args.lengths:
        x = torch.randn(1, L, 16, dtype=dtype)
        vector_field(system, x[:, :64], backend)                      # warm-up
        t_scan, fast = median_time(lambda x=x: vector_field(system, x, backend), 5)
        t_naive, slow = median_time(lambda x=x: vector_field_naive(system, x), 1 if L > 2048 else 2)
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

    new = d16_case(None, args.old_timeout)
    print(f"D=16 case, this tree: {new.get('wall_s')} s, regime {new.get('simulated_regime')}", flush=True)
    old = d16_case(args.old_commit, args.old_timeout)
    print(f"D=16 case, {args.old_commit}: {old.get('wall_s')} s, regime {old.get('simulated_regime')}", flush=True)
    speedup = old["wall_s"] / new["wall_s"] if old.get("wall_s") and new.get("wall_s") else None

    result = {
        "provenance": provenance(" ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])),
        "available_backends": available_backends(),
        "scan_backend": backend,
        "dtype": "float64",
        "threads": torch.get_num_threads(),
        "load_average_1_5_15_min_at_end": list(os.getloadavg()),   # the machine is shared
        "vector_field": {"D": 16, "N": 16, "batch": 1, "rows": rows, "goals": goals},
        "simulation_1d": {"L": args.sim_tokens, "t_end": args.sim_t_end, "mu": mu, "s": s, "a": a,
                          "method": sim.method, "rtol": 1e-7, "atol": 1e-10, "wall_s": wall,
                          "field_evaluations": sim.n_evals, "simulated_regime": regime,
                          "x0": "N(0,1), seed 1"},
        "simulation_d16": {"D": 16, "N": 16, "L": 10, "t_end": 1e4, "system": "TokenSystem.random(16, 16, 0)",
                           "x0": "N(0,1), seed 1", "this_tree": new, "old": old, "speedup": speedup,
                           "goal_s": 30.0, "goal_ok": bool(new.get("wall_s") and new["wall_s"] <= 30.0)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
