"""Benchmark: the README's D = 16 example of ``tokendyn simulate``, as a user runs it.

    tokendyn simulate --random --dim 16 --state 16 --tokens 10 --t-end 10000

is run as a command (a fresh process each time, its JSON read back) with this tree and, in the
same run and interleaved round by round, with an earlier commit (default e900345, whose stiff
solver used a finite-difference Jacobian on every token, frozen ones included), exported by
``git archive``. Each run keeps the command's own limits (45 s of wall clock by default). Goal:
this tree reaches t_end = 10⁴ in ≤ 20 s on the 2-core CPU.

Per run: process wall time, the simulation's own wall_s, field evaluations, the time reached, the
regime, and per token the blow-up or stop time and status. The machine is shared, so the load
average before and after each run is recorded too.

Writes results/simulate_d16.json (provenance: device, date, commit, command; the CPU model, the
number of cores, torch's threads). Run: python benchmarks/simulate_d16.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tokendyn.provenance import provenance

ARGS = ["simulate", "--random", "--dim", "16", "--state", "16", "--tokens", "10", "--t-end", "10000"]
GOAL_S = 20.0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_once(src: str, out_json: Path, timeout: float) -> dict:
    """One run of the command against the tokendyn at ``src``; its JSON, timings and exit status."""
    env = {**os.environ, "PYTHONPATH": src}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, "-m", "tokendyn", *ARGS, "--json", str(out_json)], env=env,
                             capture_output=True, text=True, timeout=timeout, cwd=src)
    except subprocess.TimeoutExpired:
        return {"process_wall_s": None, "timed_out_after_s": timeout}
    wall = time.perf_counter() - t0
    row = {"process_wall_s": wall, "exit_status": res.returncode, "load_1min_before": load_before,
           "load_1min_after": os.getloadavg()[0], "first_line": (res.stdout.splitlines() or [""])[0]}
    if out_json.is_file():
        d = json.loads(out_json.read_text())
        row.update({k: d.get(k) for k in ("wall_s", "n_evals", "t_end", "truncated_at", "stop_reason", "regime",
                                          "method", "stiff_fallback_from", "blowup_times", "stopped_times",
                                          "token_status", "final_norms")})
        out_json.unlink()
    else:
        row["stderr_tail"] = res.stderr.strip().splitlines()[-3:]
    return row


def summary(runs: list[dict]) -> dict:
    walls = [r["process_wall_s"] for r in runs if r.get("process_wall_s") is not None]
    reached = [r.get("t_end") == 10000 and r.get("truncated_at") is None for r in runs]
    return {"process_wall_s_median": statistics.median(walls) if walls else None,
            "process_wall_s_min": min(walls) if walls else None,
            "process_wall_s_max": max(walls) if walls else None,
            "runs_reaching_t_end": sum(reached), "runs": len(runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/simulate_d16.json"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", default="e900345", help="earlier commit timed beside this tree ('' for none)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before a run is killed")
    args = ap.parse_args()

    root = Path(__file__).resolve().parent.parent
    rows: dict[str, list] = {"this_tree": [], "baseline": []}
    with tempfile.TemporaryDirectory() as tmp:
        base_src = None
        if args.baseline:
            base_src = Path(tmp) / "baseline"
            base_src.mkdir()
            archive = subprocess.run(["git", "-C", str(root), "archive", args.baseline, "tokendyn"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(base_src)], input=archive, check=True)
        for k in range(args.rounds):
            order = [("this_tree", str(root)), ("baseline", str(base_src) if base_src else None)]
            if k % 2:
                order.reverse()
            for name, src in order:
                if src is None:
                    continue
                row = run_once(src, Path(tmp) / f"{name}.json", args.timeout)
                rows[name].append(row)
                print(f"round {k + 1}, {name}: {row.get('process_wall_s')} s, t reached {row.get('t_end')}, "
                      f"{row.get('first_line', '')}", flush=True)

    prov = provenance(" ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]))
    prov.update({"cpu_model": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()})
    this = summary(rows["this_tree"])
    result = {
        "provenance": prov,
        "case": "tokendyn " + " ".join(ARGS),
        "goal_s": GOAL_S,
        "goal_ok": bool(this["process_wall_s_max"] is not None and this["process_wall_s_max"] <= GOAL_S
                        and this["runs_reaching_t_end"] == this["runs"]),
        "this_tree": {"summary": this, "runs": rows["this_tree"]},
        "baseline": {"commit": args.baseline or None, "summary": summary(rows["baseline"]),
                     "runs": rows["baseline"]} if args.baseline else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"this tree: median {this['process_wall_s_median']} s (goal ≤ {GOAL_S:g} s: "
          f"{'met' if result['goal_ok'] else 'not met'}); written {args.out}")


if __name__ == "__main__":
    main()
