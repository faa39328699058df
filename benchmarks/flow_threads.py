"""The idealised flow of real layers on the CPU with numpy's BLAS on one thread (the simulator's
default, :func:`tokendyn.dynamics.integrate.solver_blas_threads`) and with its own thread count.

The layers are those of the main job's analysis section at the quick scale (MambaLM d_model 64,
4 layers, d_state 16, seed 0, on the first 512 held-out Bible bytes: D = 128, the first 256 tokens
of each layer's scan input, RK45 to t = 5). Both modes run in alternating rounds in one process;
for each the wall time of the four flows, their field evaluations, the time per evaluation, and
the largest difference of the norm ratios between the modes (numpy's reductions may group sums
differently with more threads).

Writes results/flow_threads.json with provenance. Run: python benchmarks/flow_threads.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from tokendyn.analysis.layer_flow import idealised_flow, layer_system, layer_tokens
from tokendyn.analysis.layers import model_io_parameters
from tokendyn.analysis.trajectories import run_with_internals
from tokendyn.dynamics import integrate
from tokendyn.model import MambaConfig, MambaLM
from tokendyn.provenance import provenance
from tokendyn.reproduce.analysis import held_out_bytes


def layers() -> list[tuple]:
    """(system, tokens (L, D)) of every layer of the quick analysis model."""
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=64, n_layer=4, vocab_size=256, d_state=16)).eval()
    out = run_with_internals(model, held_out_bytes(512))
    return [(layer_system(p), layer_tokens(p, m)) for p, m in zip(model_io_parameters(model), out.internals)]


def one_round(cases, limited: bool) -> dict:
    """The four flows in one mode: wall time, evaluations, norm ratios at t_end."""
    keep = integrate.solver_blas_threads
    if not limited:     # the other mode: numpy's BLAS keeps the thread count it started with
        integrate.solver_blas_threads = lambda method: contextlib.nullcontext()
    try:
        t0 = time.perf_counter()
        flows = [idealised_flow(system, u) for system, u in cases]
        wall = time.perf_counter() - t0
    finally:
        integrate.solver_blas_threads = keep
    evals = sum(f.n_evals for f in flows)
    return {"wall_s": wall, "field_evaluations": evals, "ms_per_evaluation": 1e3 * wall / evals,
            "ratios": [float(f.ratio[-1]) for f in flows]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("results/flow_threads.json"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cases = layers()
    rows = {"one_blas_thread": [], "blas_threads_unchanged": []}
    for r in range(args.rounds):
        for name, limited in (("one_blas_thread", True), ("blas_threads_unchanged", False)):
            row = one_round(cases, limited)
            rows[name].append(row)
            print(f"round {r}: {name}: {row['wall_s']:.2f} s, {row['field_evaluations']} evaluations, "
                  f"{row['ms_per_evaluation']:.2f} ms each", flush=True)

    diff = max(abs(a - b) / abs(b) for x, y in zip(rows["one_blas_thread"], rows["blas_threads_unchanged"])
               for a, b in zip(x["ratios"], y["ratios"]))
    summary = {name: {"median_wall_s": statistics.median(x["wall_s"] for x in runs),
                      "median_ms_per_evaluation": statistics.median(x["ms_per_evaluation"] for x in runs)}
               for name, runs in rows.items()}
    walls = [summary[name]["median_wall_s"] for name in ("blas_threads_unchanged", "one_blas_thread")]
    summary["speedup"] = walls[0] / walls[1]
    summary["max_relative_ratio_difference"] = diff
    result = {"provenance": provenance(" ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])),
              "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "load_average_1_5_15_min_at_end": list(os.getloadavg()),
              "case": "quick analysis model (MambaLM d_model 64, 4 layers, d_state 16, seed 0), 512 held-out "
                      "Bible bytes; each layer's flow from its first 256 scan-input tokens, RK45 to t = 5",
              "summary": summary, "rounds": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"speedup {summary['speedup']:.1f}x, largest relative difference of the norm ratios {diff:.1e}; "
          f"written {args.out}")


if __name__ == "__main__":
    main()
