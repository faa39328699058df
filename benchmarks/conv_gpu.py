"""The mixer's causal conv + SiLU on one GPU: the fused Triton kernels vs PyTorch's depthwise
conv1d (the unfused path, which mamba_ssm also takes without the causal_conv1d package), in one
run, with the memory floor measured in the same run.

    python benchmarks/conv_gpu.py --commit $(git rev-parse HEAD) --out results/conv_gpu.json

Shapes are the MambaLM 768-wide layer's (dim 1536, K 4) at the training benchmark's batch; x is a
channel slice of a (batch, 2*dim, length) tensor, as in the mixer. Times: GPU kernel time per call
from torch.profiler (the fused kernels take ~0.03-0.15 ms, less than the host needs to launch a
forward and backward through autograd, so CUDA-event times would measure the host); the CUDA-event
medians (triton.testing.do_bench) are recorded beside them as ``event_ms``.
Floors: forward reads x and writes out; forward+backward
adds reading x and the output gradient and writing dx (dw and dbias are negligible).
A sweep of launch shapes runs first; the table uses the fastest forward+backward.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import gpu_kernel_ms  # noqa: E402 -- after the sys.path setup
from scan_gpu import copy_bandwidth  # noqa: E402 -- after the sys.path setup

from tokendyn.ops import causal_conv  # noqa: E402 -- after the sys.path setup
from tokendyn.provenance import provenance  # noqa: E402 -- after the sys.path setup

SHAPES = [(8, 1536, 1024, 4), (8, 1536, 2048, 4), (1, 2048, 65536, 4)]


def inputs(shape, dtype):
    b, d, l, k = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(b, 2 * d, l, generator=g, device="cuda").to(dtype)[:, :d].requires_grad_()
    w = (torch.randn(d, k, generator=g, device="cuda") * 0.5).requires_grad_()
    bias = torch.randn(d, generator=g, device="cuda").requires_grad_()
    up = torch.randn(b, d, l, generator=g, device="cuda").to(dtype)
    return x, w, bias, up


def time_pair(fn, x, w, bias, up, kernels_only=True):
    """(forward ms, forward+backward ms): GPU kernel time (profiler), or with
    ``kernels_only=False`` CUDA-event time, which includes the GPU waiting for the host."""
    def f():
        with torch.no_grad():
            fn(x, w, bias)

    def fb():
        out = fn(x, w, bias)
        torch.autograd.grad(out, (x, w, bias), up)
    if kernels_only:
        return gpu_kernel_ms(f), gpu_kernel_ms(fb)
    return (do_bench(f, warmup=20, rep=200, return_mode="median"),
            do_bench(fb, warmup=20, rep=200, return_mode="median"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/conv_gpu.json")
    ap.add_argument("--commit", default=None)
    args = ap.parse_args()
    prov = provenance(" ".join(["python"] + sys.argv))
    if args.commit:
        prov["commit"] = args.commit
    bw = copy_bandwidth()

    def fused(x, w, b):
        return causal_conv.causal_conv1d_silu(x, w, b, fused=True)

    def ref(x, w, b):
        # PyTorch's conv1d wants one dtype: under autocast, as in the mixer
        with torch.autocast("cuda", dtype=x.dtype):
            return causal_conv.causal_conv1d_silu_reference(x, w, b)
    dtype = torch.bfloat16

    sweep = []
    x, w, bias, up = inputs(SHAPES[0], dtype)
    default = dict(causal_conv.LAUNCH)
    for bd in (2, 4, 8):
        for bt in (256, 512, 1024):
            for warps in (4, 8):
                causal_conv.LAUNCH.update(block_d=bd, block_t=bt, num_warps=warps)
                f, fb = time_pair(fused, x, w, bias, up)
                sweep.append({"block_d": bd, "block_t": bt, "num_warps": warps, "fwd_ms": f, "fwdbwd_ms": fb})
    best = min(sweep, key=lambda r: r["fwdbwd_ms"])
    causal_conv.LAUNCH.update({k: best[k] for k in ("block_d", "block_t", "num_warps")})
    print("default", default, "best", best, flush=True)

    rows = []
    for shape in SHAPES:
        b, d, l, k = shape
        x, w, bias, up = inputs(shape, dtype)
        with torch.no_grad():
            err = ((fused(x, w, bias).float() - ref(x, w, bias).float()).norm() / ref(x, w, bias).float().norm()).item()
        f_ms, fb_ms = time_pair(fused, x, w, bias, up)
        r_ms, rb_ms = time_pair(ref, x, w, bias, up)
        wall = [time_pair(fn, x, w, bias, up, kernels_only=False) for fn in (fused, ref)]
        n = b * d * l * 2                                   # bytes of one (b, d, l) bf16 tensor
        floor_f = 2 * n / bw * 1e3
        floor_fb = 5 * n / bw * 1e3
        row = {"shape": [b, d, l, k], "dtype": "bfloat16", "fused_fwd_ms": f_ms, "fused_fwdbwd_ms": fb_ms,
               "torch_fwd_ms": r_ms, "torch_fwdbwd_ms": rb_ms, "speedup_fwd": r_ms / f_ms,
               "speedup_fwdbwd": rb_ms / fb_ms, "floor_fwd_ms": floor_f, "floor_fwdbwd_ms": floor_fb,
               "fused_fwd_x_floor": f_ms / floor_f, "fused_fwdbwd_x_floor": fb_ms / floor_fb,
               "rel_err_vs_torch": err,
               "event_ms": {"fused_fwd": wall[0][0], "fused_fwdbwd": wall[0][1],
                            "torch_fwd": wall[1][0], "torch_fwdbwd": wall[1][1]}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {**prov, "copy_bandwidth_tb_s": bw / 1e12, "launch_default": default, "launch_chosen": best,
           "sweep": sweep, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
