"""Host (CPU) time per call of the fused GPU ops, on inputs so small that the GPU work is
negligible: what a training step pays in Python and launch overhead per layer.

    python benchmarks/host_overhead_gpu.py --out results/host_overhead_gpu.json

Rows: microseconds per call (median of 5 rounds of 300 calls, no synchronisation inside a
round) for tokendyn's scan and conv, forward and forward+backward, mamba_ssm's
selective_scan_fn when importable, and an empty Triton kernel with the scan's argument count.
Then a cProfile listing of the scan's forward+backward calls.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import bench_parser, bench_provenance  # noqa: E402 -- after the sys.path setup

from tokendyn.ops.causal_conv import causal_conv1d_silu  # noqa: E402 -- after the sys.path setup
from tokendyn.ops.triton_scan import selective_scan_triton  # noqa: E402 -- after the sys.path setup


@triton.jit
def _empty_kernel(a, b, c, d, e, f, g, h, i, j, k, l0, m, n, o, p, q, r, s, t, u, v, w, x, y, z,
                  F1: tl.constexpr, F2: tl.constexpr, F3: tl.constexpr):
    pass


def per_call_us(fn, calls=300, rounds=5):
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - t0) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(out)


def main():
    ap = bench_parser("results/host_overhead_gpu.json")
    args = ap.parse_args()
    prov = bench_provenance(__file__, args)
    dev = "cuda"
    b, d, length, n = 1, 8, 16, 4
    u = torch.randn(b, d, length, device=dev, requires_grad=True)
    delta = torch.randn(b, d, length, device=dev, requires_grad=True)
    A = -torch.rand(d, n, device=dev).requires_grad_()
    B = torch.randn(b, n, length, device=dev, requires_grad=True)
    C = torch.randn(b, n, length, device=dev, requires_grad=True)
    D = torch.randn(d, device=dev, requires_grad=True)
    z = torch.randn(b, d, length, device=dev, requires_grad=True)
    bias = torch.randn(d, device=dev, requires_grad=True)
    w = torch.randn(d, 4, device=dev, requires_grad=True)
    cb = torch.randn(d, device=dev, requires_grad=True)
    scan_args = (u, delta, A, B, C, D, z, bias)

    def scan_f():
        with torch.no_grad():
            selective_scan_triton(*scan_args, delta_softplus=True)

    def scan_fb():
        selective_scan_triton(*scan_args, delta_softplus=True).sum().backward()

    def conv_f():
        with torch.no_grad():
            causal_conv1d_silu(u, w, cb, fused=True)

    def conv_fb():
        causal_conv1d_silu(u, w, cb, fused=True).sum().backward()

    ints = [1] * 26
    rows = {"empty_triton_kernel_26_args": per_call_us(lambda: _empty_kernel[(1,)](u, *ints[1:], F1=1, F2=2, F3=3)),
            "tokendyn_scan_fwd": per_call_us(scan_f), "tokendyn_scan_fwdbwd": per_call_us(scan_fb),
            "tokendyn_conv_fwd": per_call_us(conv_f), "tokendyn_conv_fwdbwd": per_call_us(conv_fb),
            "torch_sum_backward_only": per_call_us(lambda: u.sum().backward())}
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        def peer_f():
            with torch.no_grad():
                selective_scan_fn(*scan_args, delta_softplus=True)

        def peer_fb():
            selective_scan_fn(*scan_args, delta_softplus=True).sum().backward()
        rows["mamba_ssm_scan_fwd"] = per_call_us(peer_f)
        rows["mamba_ssm_scan_fwdbwd"] = per_call_us(peer_fb)
    except ImportError as exc:
        print(f"mamba_ssm not available: {exc}")
    for k, v in rows.items():
        print(f"{k:>32}: {v:8.1f} us per call")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(200):
        scan_fb()
    prof.disable()
    torch.cuda.synchronize()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
    print(buf.getvalue())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({**prov, "shape": [b, d, length, n], "us_per_call": rows,
                                          "cprofile_scan_fwdbwd_200_calls": buf.getvalue()}, indent=2))


if __name__ == "__main__":
    main()
