"""The Mamba-2 (SSD) scan on one GPU: tokendyn's ``chunked`` backend (plain PyTorch) vs mamba_ssm's
fused Triton ``mamba_chunk_scan_combined``, in one run.

    python benchmarks/ssd_gpu.py --out results/ssd_gpu.json
    python benchmarks/ssd_gpu.py --cpu-smoke --out /tmp/ssd_smoke.json     # tiny, CPU, no peer

Inputs (Mamba-2's initialisation): x, B, C ~ N(0, 1) and Δ = exp(U(log 0.001, log 0.1)) in the
row's dtype; A = -U(1, 16) and D ~ N(0, 1) in float32 (parameters stay float32 in a bf16 model).
Δ is passed already positive (the peer with dt_softplus=False, no dt_bias), no initial state, no
z gate: both compute y = SSD(x, Δ, A, B, C) + D x. Every input requires grad, in the forward too
(as in training: the forward then records what the backward needs).

Per row, first the check: y and the gradients of every input (for the upstream gradient used in
the timing) of each contender against ``ssd_chunked`` run in float64 on the same rounded inputs
(tests/test_ssd.py ties that to the plain recurrence), as relative norm errors; ``check.ok`` says
whether both are within the dtype's tolerance. Then the timing: the contenders are timed in turn
within each of ``--rounds`` rounds (interleaved, so that clock and thermal drift hit both alike),
each by CUDA events around back-to-back calls (about ``--round-ms`` per contender per round); a
contender's time is the median over rounds of the mean per call. ``ratio_fwd``/``ratio_fwdbwd``
= chunked ms / mamba_ssm ms (above 1: the chunked backend is slower). The forward without
gradients (``fwd_nograd``: inference, prefill, analysis) is timed as well. tokendyn's fused
``triton`` backend runs beside the others in every mode and check: ``ratio_<mode>_triton`` =
triton ms / mamba_ssm ms, ``triton_over_chunked_<mode>``. For tuning: ``--skip-chunked`` leaves
the chunked backend out of the timings (it stays the check), ``--rows`` picks rows of the shape
list, ``--triton-set NAME=INT`` overrides one of the triton backend's tile constants for the run
(recorded under ``config.triton_tiles``). Peak memory is the extra
allocation of one forward+backward. The JSON is rewritten after every row ("complete": false until
the last), so a run cut short keeps what it measured; the exit status is 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import bench_parser, bench_provenance  # noqa: E402 -- after the sys.path setup
from _timing import events_ms  # noqa: E402 -- after the sys.path setup

from tokendyn.ops import ssd_chunked  # noqa: E402 -- after the sys.path setup
from tokendyn.ops import ssd_triton as ssd_triton_module  # noqa: E402 -- after the sys.path setup
from tokendyn.ops.ssd_triton import ssd_triton  # noqa: E402 -- after the sys.path setup

BF16, FP32 = torch.bfloat16, torch.float32
DTYPE_NAMES = {BF16: "bfloat16", FP32: "float32"}
# (batch, length, heads, head_dim, state, n_groups): Mamba-2 130M-2.7B-like widths (heads·64 =
# d_inner), the long sequence, and one with 8 groups
SHAPES = [
    ((8, 2048, 24, 64, 64, 1), BF16), ((8, 2048, 24, 64, 64, 1), FP32),
    ((8, 2048, 48, 64, 128, 1), BF16), ((8, 2048, 48, 64, 128, 1), FP32),
    ((4, 8192, 24, 64, 128, 1), BF16), ((4, 8192, 24, 64, 128, 1), FP32),
    ((8, 2048, 32, 64, 128, 8), BF16),
]
SMOKE_SHAPES = [((2, 100, 4, 8, 8, 2), FP32), ((1, 70, 2, 4, 4, 1), BF16)]
# relative norm error allowed against the float64 run: bfloat16 rounds every input and output to
# 8 bits; the peer's float32 matmuls may run in TF32 (10-bit mantissa)
CHECK_TOL = {BF16: 3e-2, FP32: 5e-3}
SHAPE_KEYS = ("batch", "length", "heads", "head_dim", "state", "groups")


def parse_args(argv=None) -> argparse.Namespace:
    ap = bench_parser("results/ssd_gpu.json", __doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds per row (median reported)")
    ap.add_argument("--round-ms", type=float, default=100.0, help="time per contender per round")
    ap.add_argument("--chunk-size", type=int, default=64, help="chunk of tokendyn's chunked backend")
    ap.add_argument("--peer-chunk-size", type=int, default=256, help="chunk of mamba_ssm (Mamba2's default)")
    ap.add_argument("--skip-peer", action="store_true", help="leave out mamba_ssm")
    ap.add_argument("--skip-chunked", action="store_true",
                    help="leave the chunked backend out of the timings (it stays the float64 check)")
    ap.add_argument("--no-triton", dest="triton", action="store_false",
                    help="leave out tokendyn's fused triton backend")
    ap.add_argument("--triton-chunk-size", type=int, default=256, help="chunk of tokendyn's triton backend")
    ap.add_argument("--peer-source", default=None,
                    help="an unpacked mamba_ssm sdist: load its Triton SSD from there, without the "
                         "package's CUDA extensions (default: import the installed mamba_ssm)")
    ap.add_argument("--rows", default=None,
                    help="comma-separated indices into the shape list (default: every row)")
    ap.add_argument("--triton-set", action="append", default=[], metavar="NAME=INT",
                    help="override one of tokendyn.ops.ssd_triton's tile constants (BM, BK, BS_BWD, "
                         "WARPS_SCAN, WARPS_BWD, BM_CB, BK_CB, BN_CB, WARPS_CB, ...) for this run; repeatable")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="tiny shapes on the CPU, no peer, two short rounds: checks that the script runs")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.round_ms <= 0 or args.chunk_size < 1 or args.peer_chunk_size < 1:
        ap.error("--rounds, --round-ms, --chunk-size and --peer-chunk-size must be positive")
    args.tiles = {}
    for item in args.triton_set:
        name, _, value = item.partition("=")
        if not (name.isupper() and isinstance(getattr(ssd_triton_module, name, None), int) and value.isdigit()
                and int(value) >= 0):
            ap.error(f"--triton-set takes NAME=INT with NAME an integer constant of tokendyn.ops.ssd_triton, "
                     f"got {item!r}")
        args.tiles[name] = int(value)
    if args.cpu_smoke:
        args.rounds, args.round_ms, args.skip_peer = 2, 5.0, True
        args.triton = args.triton and os.environ.get("TRITON_INTERPRET") == "1"
    return args


def load_peer(source: str | None = None):
    """(mamba_chunk_scan_combined, its description) or (None, why not).

    ``source``: an unpacked mamba_ssm source tree (the folder holding ``mamba_ssm/``). The SSD
    scan is pure Triton, so it runs from the sources without the package's CUDA extensions,
    which ``import mamba_ssm`` would load (its ``__init__`` imports the Mamba-1 CUDA scan): the
    package is registered by its path alone and only the Triton modules are imported.
    """
    if source is None:
        try:
            import mamba_ssm
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        except ImportError as exc:
            return None, f"mamba_ssm not importable: {exc}"
        return mamba_chunk_scan_combined, f"mamba_ssm {getattr(mamba_ssm, '__version__', '?')}"
    import importlib
    import re
    import types

    root = Path(source) / "mamba_ssm"
    init = root / "__init__.py"
    if not init.is_file():
        return None, f"{source} holds no mamba_ssm/__init__.py"
    version = re.search(r'__version__ = "([^"]+)"', init.read_text())
    package = types.ModuleType("mamba_ssm")
    package.__path__ = [str(root)]
    package.__version__ = version.group(1) if version else "?"
    sys.modules["mamba_ssm"] = package
    try:
        module = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
    except ImportError as exc:
        return None, f"mamba_ssm's Triton SSD not importable from {source}: {exc}"
    return (module.mamba_chunk_scan_combined,
            f"mamba_ssm {package.__version__} (Triton SSD kernels from its source, CUDA extensions not built)")


def make_inputs(shape, dtype, device, seed=0):
    b, l, h, p, n, g = shape
    gen = torch.Generator(device=device).manual_seed(seed)

    def rn(*s):
        return torch.randn(*s, generator=gen, device=device)

    def un(lo, hi, *s):
        return torch.rand(*s, generator=gen, device=device) * (hi - lo) + lo

    return {
        "x": rn(b, l, h, p).to(dtype),
        "dt": torch.exp(un(math.log(1e-3), math.log(1e-1), b, l, h)).to(dtype),
        "A": -un(1.0, 16.0, h),
        "B": rn(b, l, g, n).to(dtype),
        "C": rn(b, l, g, n).to(dtype),
        "D": rn(h),
    }


class Contender:
    """One implementation on one row's leaves (shared by the contenders; each forward+backward
    first clears their gradients)."""

    def __init__(self, fn, leaves: dict, g: torch.Tensor):
        self.fn, self.leaves, self.g = fn, leaves, g

    def fwd(self):
        return self.fn(**self.leaves)

    def fwdbwd(self):
        for v in self.leaves.values():
            v.grad = None
        self.fn(**self.leaves).backward(self.g)

    def fwd_nograd(self):
        with torch.no_grad():
            return self.fn(**self.leaves)

    def out_and_grads(self):
        self.fwdbwd()
        with torch.no_grad():
            y = self.fn(**self.leaves)
        return y, {k: v.grad.detach().clone() for k, v in self.leaves.items()}


def contenders(args, peer):
    def ours(x, dt, A, B, C, D):
        return ssd_chunked(x, dt, A, B, C, D=D, chunk_size=args.chunk_size)

    out = {} if args.skip_chunked else {"chunked": ours}
    if args.triton:
        def fused(x, dt, A, B, C, D):
            return ssd_triton(x, dt, A, B, C, D=D, chunk_size=args.triton_chunk_size)

        out["triton"] = fused
    if peer is not None:
        def theirs(x, dt, A, B, C, D):
            return peer(x, dt, A, B, C, chunk_size=args.peer_chunk_size, D=D)

        out["mamba_ssm"] = theirs
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ms(call, reps: int, device) -> float:
    """Mean milliseconds per call over ``reps`` back-to-back calls (CUDA events on a GPU)."""
    if device.type == "cuda":
        return events_ms(call, reps)
    t0 = time.perf_counter()
    for _ in range(reps):
        call()
    return (time.perf_counter() - t0) * 1e3 / reps


def interleaved(cases: dict, mode: str, args, device) -> dict:
    """name -> {"ms": median over rounds, "rounds_ms": [...], "reps": calls per round}."""
    reps = {}
    for name, case in cases.items():
        call = getattr(case, mode)
        call()                                            # compile, allocator warm-up
        sync(device)
        est = time_ms(call, 2, device)
        reps[name] = max(1, min(2000, round(args.round_ms / max(est, 1e-3))))
    samples = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, case in cases.items():
            samples[name].append(time_ms(getattr(case, mode), reps[name], device))
    return {name: {"ms": statistics.median(v), "rounds_ms": v, "reps": reps[name]} for name, v in samples.items()}


def rel(x, ref) -> float:
    x, ref = x.detach().double(), ref.detach().double()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def check_row(cases: dict, data: dict, g: torch.Tensor, dtype) -> dict:
    """Each contender's y and gradients against ssd_chunked in float64 on the same rounded inputs."""
    leaves64 = {k: v.detach().double().requires_grad_() for k, v in data.items()}
    y64 = ssd_chunked(**leaves64)
    y64.backward(g.double())
    ref = {"y": y64.detach(), **{f"d{k}": v.grad for k, v in leaves64.items()}}
    res = {"tolerance": CHECK_TOL[dtype], "reference": "ssd_chunked in float64"}
    ok, ys = True, {}
    for name, case in cases.items():
        ys[name], grads = case.out_and_grads()
        errs = {"y": rel(ys[name], ref["y"]), **{f"d{k}": rel(v, ref[f"d{k}"]) for k, v in grads.items()}}
        res[f"{name}_vs_float64"] = errs
        ok = ok and all(e < CHECK_TOL[dtype] for e in errs.values())
    if "mamba_ssm" in ys and "chunked" in ys:
        res["y_chunked_vs_mamba_ssm"] = rel(ys["chunked"], ys["mamba_ssm"])
    res["ok"] = bool(ok)
    return res


def peak_gib(case, device):
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    case.fwdbwd()
    sync(device)
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def run_row(shape, dtype, impls, args, device, log) -> dict:
    data = make_inputs(shape, dtype, device)
    leaves = {k: v.detach().clone().requires_grad_() for k, v in data.items()}
    b, l, h, p, _, _ = shape
    g = torch.randn(b, l, h, p, generator=torch.Generator(device=device).manual_seed(1), device=device).to(dtype)
    cases = {name: Contender(fn, leaves, g) for name, fn in impls.items()}
    row = {"shape": dict(zip(SHAPE_KEYS, shape)), "dtype": DTYPE_NAMES[dtype]}
    row["check"] = check_row(cases, data, g, dtype)
    if not row["check"]["ok"]:
        log(f"CHECK FAILED {shape} {DTYPE_NAMES[dtype]}: {json.dumps(row['check'])}")
    sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    for name in cases:
        row[name] = {"peak_mem_fwdbwd_gib": peak_gib(cases[name], device)}
    for mode in ("fwd", "fwdbwd", "fwd_nograd"):
        for name, r in interleaved(cases, mode, args, device).items():
            row[name].update({f"{mode}_ms": r["ms"], f"{mode}_rounds_ms": r["rounds_ms"], f"{mode}_reps": r["reps"]})
    peer = row.get("mamba_ssm")
    for mode in ("fwd", "fwdbwd", "fwd_nograd"):
        row[f"ratio_{mode}"] = row["chunked"][f"{mode}_ms"] / peer[f"{mode}_ms"] if peer and "chunked" in row else None
    if "triton" in row:
        for mode in ("fwd", "fwdbwd", "fwd_nograd"):
            row[f"ratio_{mode}_triton"] = row["triton"][f"{mode}_ms"] / peer[f"{mode}_ms"] if peer else None
            if "chunked" in row:
                row[f"triton_over_chunked_{mode}"] = row["triton"][f"{mode}_ms"] / row["chunked"][f"{mode}_ms"]
    del cases, leaves, data
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", flush=True)

    if args.cpu_smoke:
        device, shapes = torch.device("cpu"), SMOKE_SHAPES
    elif torch.cuda.is_available():
        device, shapes = torch.device("cuda"), SHAPES
    else:
        print("ssd_gpu: no CUDA device here; run with --cpu-smoke to check the script on the CPU.", file=sys.stderr)
        return 2
    prov = bench_provenance(__file__, args, argv)
    if args.cpu_smoke:
        prov["device"] = f"cpu smoke ({prov['device']})"
    peer, peer_desc = (None, "left out (--skip-peer or --cpu-smoke)") if args.skip_peer else load_peer(args.peer_source)
    log(f"device {prov['device']}; peer: {peer_desc}")
    for name, value in args.tiles.items():
        setattr(ssd_triton_module, name, value)
    if args.rows is not None:
        try:
            shapes = [shapes[int(i)] for i in args.rows.split(",")]
        except (ValueError, IndexError):
            print(f"ssd_gpu: --rows takes indices 0..{len(shapes) - 1}, got {args.rows!r}.", file=sys.stderr)
            return 2
    impls = contenders(args, peer)
    rows = []

    def save(complete: bool):
        result = {"provenance": prov, "complete": complete, "peer": peer_desc if peer else None,
                  "peer_status": peer_desc,
                  "config": {"chunk_size": args.chunk_size, "peer_chunk_size": args.peer_chunk_size,
                             "triton_chunk_size": args.triton_chunk_size if args.triton else None,
                             "chunked_timed": not args.skip_chunked, "triton_tiles": args.tiles,
                             "rounds": args.rounds, "round_ms": args.round_ms, "cpu_smoke": args.cpu_smoke,
                             "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32},
                  "rows": rows, "wall_s": time.perf_counter() - t0,
                  "notes": "y = SSD(x, dt, A, B, C) + D x, dt positive (no softplus, no bias), no z, no "
                           "initial state; every input requires grad, forward included; contenders "
                           "interleaved within rounds, each timed over back-to-back calls, median over "
                           "rounds; ratio = chunked ms / mamba_ssm ms; check: relative norm errors of y "
                           "and every gradient against ssd_chunked in float64."}
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(out)

    for shape, dtype in shapes:
        try:
            row = run_row(shape, dtype, impls, args, device, log)
        except torch.cuda.OutOfMemoryError as exc:
            row = {"shape": dict(zip(SHAPE_KEYS, shape)), "dtype": DTYPE_NAMES[dtype],
                   "error": f"out of memory: {str(exc)[:200]}"}
            torch.cuda.empty_cache()
        rows.append(row)
        times = [f"{n} {m} {row[n][m + '_ms']:.3f} ms" for n in ("chunked", "triton", "mamba_ssm") if n in row
                 for m in ("fwd", "fwdbwd", "fwd_nograd") if m + "_ms" in row[n]]
        log(json.dumps({k: v for k, v in row.items() if k not in ("chunked", "mamba_ssm", "triton")})
            + " " + ", ".join(times))
        save(False)
    save(True)
    failed = [r for r in rows if not r.get("check", {}).get("ok", False)]
    log(f"wrote {args.out}; {len(rows)} rows, {len(failed)} failed or not checked")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
