"""Token reordering: SoftSort (soft, O(L²)) against the exact sort (hard, O(L log L)).

    python benchmarks/reorder.py --device cpu                 # updates results/reorder_bench.json
    python benchmarks/reorder.py --device cuda                # the same file, its "cuda" entry
    python benchmarks/reorder.py --table results/reorder_bench.json

What is timed, per mode and length L (float32, batch 8, D 256 by default): the importance
score s = kᵀx (k ∈ R^D learned), the reordering (soft: P̂ = SoftSort(s), x' = P̂x; hard: argsort,
gather, straight-through score gradient), and the backward of (x'·w).sum() for x and k with a
fixed random w — the authors' measurement. Forward+backward, median (and minimum) of --repeats
after one warm-up, in one process (on a shared machine the minimum is the steadier number).

Peak memory: CUDA — torch.cuda.max_memory_allocated during one call minus the memory allocated
before it; CPU — one call in a fresh subprocess, peak resident set size (VmHWM reset just
before the call) minus the resident size before it, with glibc's mmap threshold fixed at
128 KiB (MALLOC_MMAP_THRESHOLD_) for both methods: otherwise the threshold adapts upwards and
freed blocks stay in a growing heap, so the peak counts the allocator's fragmentation
(measured: hard at L = 16,384 read 1.5 GiB that way against 0.41 GiB with the threshold fixed). \
A (mode, L) whose estimated need exceeds
the device's free memory is skipped and recorded with the reason.

The file holds one entry per device kind ("cpu", "cuda"); a run replaces only its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scan_cpu import _status_kb, cpu_model, reset_peak_rss  # noqa: E402 -- after the sys.path setup

from tokendyn.model.reorder import hard_permute, importance_scores, soft_permute, softsort_matrix  # noqa: E402 -- after the sys.path setup
from tokendyn.reproduce import provenance  # noqa: E402 -- after the sys.path setup

MODES = ("soft", "hard")
LENGTHS = (256, 1024, 4096, 16384)


def make_inputs(batch, dim, length, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, length, generator=g).to(device).requires_grad_(True)
    k = (torch.randn(dim, generator=g) / dim ** 0.5).to(device).requires_grad_(True)
    w = torch.randn(batch, dim, length, generator=g).to(device)
    return x, k, w


def reorder(mode, x, k):
    s = importance_scores(x, torch.zeros_like(k), k)
    if mode == "soft":
        return soft_permute(softsort_matrix(s), x)
    return hard_permute(s, x)[0][0]


def one_call(mode, x, k, w):
    """Forward and backward once; returns the loss (synchronised). x' is kept only where the
    method's backward keeps it."""
    loss = (reorder(mode, x, k) * w).sum()
    loss.backward()
    x.grad = k.grad = None
    if x.is_cuda:
        torch.cuda.synchronize()
    return float(loss.detach())


def estimated_bytes(mode, batch, dim, length) -> int:
    """A generous estimate of one call's peak: soft keeps about four (batch, L, L) float32
    matrices alive at once (logits, P̂, and their gradients); hard a few (batch, D, L)."""
    if mode == "soft":
        return 4 * 4 * batch * length * length + 8 * 4 * batch * dim * length
    return 16 * 4 * batch * dim * length


def free_bytes(device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return _status_kb_file("/proc/meminfo", "MemAvailable") * 1024


def _status_kb_file(path, field) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def memory_cuda(mode, x, k, w) -> int:
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    one_call(mode, x, k, w)
    return int(torch.cuda.max_memory_allocated() - before)


def memory_child(args) -> None:
    """Subprocess body (CPU): one call, print the peak RSS increase in bytes."""
    torch.set_num_threads(args.threads)
    x, k, w = make_inputs(args.batch, args.dim, args.length, torch.device("cpu"))
    one_call(args.mode, x, k, w)              # warm-up: allocator and thread pools
    before = _status_kb("VmRSS")
    reset_peak_rss()
    one_call(args.mode, x, k, w)
    print(json.dumps({"peak_extra_bytes": max(0, _status_kb("VmHWM") - before) * 1024}))


def memory_cpu(mode, length, args) -> int | None:
    cmd = [sys.executable, __file__, "--memory-child", "--mode", mode, "--length", str(length),
           "--batch", str(args.batch), "--dim", str(args.dim), "--threads", str(args.threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "131072")}
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    if res.returncode != 0:
        print(res.stderr, file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_extra_bytes"]


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows, skipped = [], []
    for length in args.lengths:
        for mode in MODES:
            need = estimated_bytes(mode, args.batch, args.dim, length)
            avail = free_bytes(device)
            if need > 0.8 * avail:
                reason = (f"needs about {need / 2**30:.1f} GiB, more than 80% of the "
                          f"{avail / 2**30:.1f} GiB free on the device")
                skipped.append({"mode": mode, "length": length, "reason": reason})
                print(f"skip {mode} L={length}: {reason}", flush=True)
                continue
            x, k, w = make_inputs(args.batch, args.dim, length, device)
            one_call(mode, x, k, w)                                   # warm-up
            repeats = args.repeats if need < 2**30 else max(1, args.repeats // 3)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                one_call(mode, x, k, w)
                times.append(time.perf_counter() - t0)
            seconds = statistics.median(times)
            peak = memory_cuda(mode, x, k, w) if device.type == "cuda" else None
            del x, k, w
            if device.type == "cpu":
                peak = memory_cpu(mode, length, args)
            rows.append({"mode": mode, "length": length, "fwd_bwd_ms": seconds * 1e3, "min_ms": min(times) * 1e3,
                         "repeats": repeats, "peak_bytes": peak})
            print(f"{mode:4s} L={length:6d}: {seconds * 1e3:9.2f} ms, peak "
                  f"{(peak or 0) / 2**20:9.1f} MiB", flush=True)
    ratios = []
    for length in args.lengths:
        by = {r["mode"]: r for r in rows if r["length"] == length}
        if len(by) == 2:
            soft, hard = by["soft"], by["hard"]
            ratios.append({"length": length, "time_soft_over_hard": soft["fwd_bwd_ms"] / hard["fwd_bwd_ms"],
                           "memory_soft_over_hard": (soft["peak_bytes"] / hard["peak_bytes"]
                                                     if soft["peak_bytes"] and hard["peak_bytes"] else None)})
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu: {cpu_model()}, {args.threads} threads"
    return {"settings": {"batch": args.batch, "dim": args.dim, "dtype": "float32", "lengths": list(args.lengths),
                         "window": 4, "tau": 1.0, "power": 1.0},
            "rows": rows, "ratios": ratios, "skipped": skipped, **provenance(" ".join(["python", *sys.argv])),
            "device": name,
            # the 1-minute load average before and after: other processes on a shared machine move CPU times
            "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]}


def markdown_table(data: dict) -> str:
    lines = []
    for kind, entry in sorted(data.items()):
        lines.append(f"{kind} ({entry['device']}, batch {entry['settings']['batch']}, D {entry['settings']['dim']}):\n")
        lines.append("| L | soft ms, median (min) | hard ms, median (min) | soft/hard time | soft MiB | hard MiB "
                     "| soft/hard memory |")
        lines.append("|---:|---:|---:|---:|---:|---:|---:|")
        for length in entry["settings"]["lengths"]:
            by = {r["mode"]: r for r in entry["rows"] if r["length"] == length}

            def cell(mode, key, scale=1.0, fmt="{:.2f}", by=by):
                r = by.get(mode)
                if r is None or r[key] is None:
                    return "skipped"
                text = fmt.format(r[key] / scale)
                if key == "fwd_bwd_ms" and "min_ms" in r:
                    text += " ({:.2f})".format(r["min_ms"])
                return text
            ratio = next((q for q in entry["ratios"] if q["length"] == length), None)
            t_ratio = "" if ratio is None else "{:.1f}x".format(ratio["time_soft_over_hard"])
            m_ratio = ("" if ratio is None or ratio["memory_soft_over_hard"] is None
                       else "{:.0f}x".format(ratio["memory_soft_over_hard"]))
            lines.append(f"| {length} | {cell('soft', 'fwd_bwd_ms')} | {cell('hard', 'fwd_bwd_ms')} | {t_ratio} | "
                         f"{cell('soft', 'peak_bytes', 2**20, '{:.1f}')} | "
                         f"{cell('hard', 'peak_bytes', 2**20, '{:.1f}')} | {m_ratio} |")
        for s in entry["skipped"]:
            lines.append(f"\nSkipped {s['mode']} at L = {s['length']}: {s['reason']}.")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "reorder_bench.json")
    p.add_argument("--table", type=Path, help="print the markdown table of a results file and exit")
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        return memory_child(args)
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    entry = run(args)
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    data["cuda" if args.device.startswith("cuda") else "cpu"] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False, suffix=".tmp") as f:
        json.dump(data, f, indent=2)
    os.replace(f.name, args.out)
    print(markdown_table(data))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
