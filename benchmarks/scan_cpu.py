"""CPU benchmark of the selective scan: reference loop, chunked backend, mambapy's pscan.

    python benchmarks/scan_cpu.py                      # writes results/scan_cpu.json
    python benchmarks/scan_cpu.py --sweep              # also sweeps chunk / group size
    python benchmarks/scan_cpu.py --lengths 1024 --out /tmp/x.json
    python benchmarks/scan_cpu.py --table results/scan_cpu.json   # markdown table

What is timed (float32, batch 2, dim 256, state 16 by default; y = C·h, no D, no gate):
  reference  tokendyn.ops.selective_scan_reference (sequential loop);
  chunked    tokendyn.ops.chunked.selective_scan_chunked;
  mambapy    mambapy's own selective-scan computation around its parallel scan:
             deltaA = exp(Δ A), BX = Δ B u, hs = pscan(deltaA, BX), y = hs @ C, in its
             (batch, length, dim, state) layout, inputs given in its (batch, length, dim)
             layout so that no transposes are timed.
Forward: under torch.no_grad(). Forward+backward: gradients of (y·w).sum() for u, Δ, A,
B, C with a fixed random w. Median of --repeats runs after one warm-up, same process.

Peak memory: each (method, length, pass) runs once in a fresh subprocess; the number is
the peak resident set size during the call (VmHWM, reset through /proc/self/clear_refs
just before it) minus the resident set size just before it — the extra memory the call
needed at its peak.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("reference", "chunked", "mambapy")


def make_inputs(batch, dim, state, length, seed=0):
    """Realistic magnitudes: Δ = softplus(N(-4, 1)), A = -(1..state) per channel."""
    g = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": torch.nn.functional.softplus(torch.randn(batch, dim, length, generator=g) - 4),
        "A": -torch.arange(1, state + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(batch, state, length, generator=g),
        "C": torch.randn(batch, state, length, generator=g),
    }


def runner(method: str, ins: dict, chunk=None, group=None):
    """A function of the inputs (in the method's own layout) returning y, and those inputs."""
    if method == "mambapy":
        from mambapy.pscan import pscan

        # mambapy's layout: x, Δ (batch, length, dim); B, C (batch, length, state).
        mine = {"u": ins["u"].transpose(1, 2).contiguous(), "delta": ins["delta"].transpose(1, 2).contiguous(),
                "A": ins["A"].clone(), "B": ins["B"].transpose(1, 2).contiguous(),
                "C": ins["C"].transpose(1, 2).contiguous()}

        def fn(u, delta, A, B, C):
            deltaA = torch.exp(delta.unsqueeze(-1) * A)                      # (b, l, d, n)
            BX = (delta.unsqueeze(-1) * B.unsqueeze(2)) * u.unsqueeze(-1)    # (b, l, d, n)
            hs = pscan(deltaA, BX)
            return (hs @ C.unsqueeze(-1)).squeeze(3)                         # (b, l, d)
        return fn, mine
    mine = {k: v.clone() for k, v in ins.items()}
    if method == "reference":
        from tokendyn.ops.reference import selective_scan_reference
        return selective_scan_reference, mine
    from tokendyn.ops.chunked import DEFAULT_CHUNK, DEFAULT_GROUP_ELEMENTS, selective_scan_chunked

    def fn(u, delta, A, B, C):
        return selective_scan_chunked(u, delta, A, B, C, chunk=chunk or DEFAULT_CHUNK,
                                      group_elements=group or DEFAULT_GROUP_ELEMENTS)
    return fn, mine


def one_call(fn, ins, backward: bool, weight=None):
    if not backward:
        with torch.no_grad():
            fn(**ins)
        return
    leaves = {k: v.detach().requires_grad_(True) for k, v in ins.items()}
    y = fn(**leaves)
    w = weight if weight is not None else torch.ones_like(y)
    torch.autograd.grad((y * w).sum(), list(leaves.values()))


def time_call(fn, ins, backward: bool, repeats: int) -> dict:
    weight = None
    if backward:
        with torch.no_grad():
            weight = torch.randn_like(fn(**ins))
    one_call(fn, ins, backward, weight)                                      # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        one_call(fn, ins, backward, weight)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": repeats}


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(args) -> None:
    """Subprocess body: one call, print the peak RSS increase in bytes."""
    torch.set_num_threads(args.threads)
    ins = make_inputs(args.batch, args.dim, args.state, args.length)
    fn, mine = runner(args.method, ins, args.chunk, args.group)
    before = _status_kb("VmRSS")
    if not reset_peak_rss():     # fall back to the lifetime peak (includes import transients)
        before = max(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    one_call(fn, mine, args.backward)
    peak = _status_kb("VmHWM")
    print(json.dumps({"peak_extra_bytes": max(0, peak - before) * 1024}))


def measure_memory(method, length, backward, args) -> int | None:
    cmd = [sys.executable, __file__, "--memory-child", "--method", method, "--length", str(length),
           "--batch", str(args.batch), "--dim", str(args.dim), "--state", str(args.state),
           "--threads", str(args.threads)]
    if backward:
        cmd.append("--backward")
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        print(res.stderr, file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_extra_bytes"]


def sweep(args) -> list[dict]:
    """Chunk and group size at one length, chunked backend only."""
    ins = make_inputs(args.batch, args.dim, args.state, args.sweep_length)
    rows = []
    per_step = args.batch * args.dim * args.state
    for group_steps in (32, 64, 128, 256, 512, 1024):
        # chunk == group_steps: the group is scanned step by step (no chunk parallelism).
        for chunk in sorted({c for c in (8, 16, 32, 64) if c < group_steps} | {group_steps}):
            fn, mine = runner("chunked", ins, chunk, group_steps * per_step)
            row = {"chunk": chunk, "group_steps": group_steps,
                   "forward_s": time_call(fn, mine, False, args.repeats)["median_s"],
                   "forward_backward_s": time_call(fn, mine, True, args.repeats)["median_s"]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def markdown_table(result: dict) -> str:
    """The results of a scan_cpu.json as a markdown table (milliseconds, MiB)."""
    lines = ["| length | method | forward ms | fwd+bwd ms | forward peak MiB | fwd+bwd peak MiB |",
             "|---:|---|---:|---:|---:|---:|"]
    for row in result["results"]:
        for method in METHODS:
            if method not in row:
                continue
            cells = []
            for kind in ("forward", "forward_backward"):
                e = row[method].get(kind)
                cells.append("skipped" if e is None else f"{1e3 * e['median_s']:.1f}")
            for kind in ("forward", "forward_backward"):
                e = row[method].get(kind)
                b = None if e is None else e.get("peak_extra_bytes")
                cells.append("–" if b is None else f"{b / 2**20:.0f}")
            lines.append(f"| {row['length']} | {method} | " + " | ".join(cells) + " |")
    lines += ["", "| length | chunked speed-up | forward | fwd+bwd |", "|---:|---|---:|---:|"]
    for row in result["results"]:
        sp = row.get("speedup_of_chunked", {})
        for other in ("reference", "mambapy"):
            f, fb = sp.get(f"forward_vs_{other}"), sp.get(f"forward_backward_vs_{other}")
            if f is None and fb is None:
                continue

            def fmt(v):
                return "–" if v is None else f"{v:.1f}×"

            lines.append(f"| {row['length']} | vs {other} | {fmt(f)} | {fmt(fb)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", default="1024,4096,16384")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--state", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--reference-max-length", type=int, default=16384,
                   help="skip the reference loop above this length (it is O(length) Python steps)")
    p.add_argument("--reference-backward-max-length", type=int, default=4096,
                   help="skip the reference forward+backward above this length (autograd through "
                        "every step: about 10 s at 4096 already)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--sweep-length", type=int, default=4096)
    p.add_argument("--out", default=str(ROOT / "results" / "scan_cpu.json"))
    p.add_argument("--table", metavar="JSON", help="print the markdown table of a results file and exit")
    # subprocess mode
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    p.add_argument("--backward", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--chunk", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--group", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        memory_child(args)
        return
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return
    torch.set_num_threads(args.threads)
    from tokendyn.ops.chunked import DEFAULT_CHUNK, DEFAULT_GROUP_ELEMENTS
    from tokendyn.provenance import provenance

    prov = provenance("python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]))
    result = {
        "provenance": prov,
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "load_average_at_start": list(os.getloadavg()),
        "config": {"batch": args.batch, "dim": args.dim, "state": args.state, "dtype": "float32",
                   "repeats": args.repeats, "chunk": DEFAULT_CHUNK,
                   "group_elements": DEFAULT_GROUP_ELEMENTS},
        "timing": "median wall-clock seconds of `repeats` runs after one warm-up, same process",
        "memory": ("peak RSS during one call in a fresh subprocess (VmHWM reset just before it) "
                   "minus RSS before it, bytes"),
        "results": [],
        "skipped": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.sweep:
        result["sweep"] = {"length": args.sweep_length, "rows": sweep(args)}
    for length in (int(x) for x in args.lengths.split(",")):
        ins = make_inputs(args.batch, args.dim, args.state, length)
        row = {"length": length}
        for method in METHODS:
            if method == "reference" and length > args.reference_max_length:
                result["skipped"].append({"method": method, "length": length,
                                          "why": f"longer than --reference-max-length {args.reference_max_length}"})
                continue
            fn, mine = runner(method, ins)
            entry = {"forward": time_call(fn, mine, False, args.repeats)}
            if method == "reference" and length > args.reference_backward_max_length:
                result["skipped"].append({
                    "method": method, "length": length, "pass": "forward_backward",
                    "why": f"longer than --reference-backward-max-length {args.reference_backward_max_length}"})
            else:
                entry["forward_backward"] = time_call(fn, mine, True, args.repeats)
            if not args.no_memory:
                for kind in entry:
                    entry[kind]["peak_extra_bytes"] = measure_memory(method, length, kind == "forward_backward", args)
            row[method] = entry
            print(length, method, json.dumps(entry), flush=True)
        for other in ("reference", "mambapy"):
            if other in row:
                for kind in row[other]:
                    row.setdefault("speedup_of_chunked", {})[f"{kind}_vs_{other}"] = (
                        row[other][kind]["median_s"] / row["chunked"][kind]["median_s"])
        result["results"].append(row)
        result["load_average_at_end"] = list(os.getloadavg())
        out.write_text(json.dumps(result, indent=2) + "\n")    # after every length: partial runs keep data
    print(markdown_table(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
