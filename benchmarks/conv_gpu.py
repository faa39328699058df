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
Contenders: the fused path with each backward kernel ("taps", "recompute"), PyTorch's conv1d, and
causal_conv1d's fused kernels where that package is installed (mamba_ssm's path in training).
``--sweep`` times the launch shapes first and keeps the fastest forward+backward.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import bench_parser, bench_provenance  # noqa: E402 -- after the sys.path setup
from _timing import gpu_kernel_ms  # noqa: E402 -- after the sys.path setup
from scan_gpu import copy_bandwidth  # noqa: E402 -- after the sys.path setup

from tokendyn.ops import causal_conv  # noqa: E402 -- after the sys.path setup

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


def peer_conv():
    """causal_conv1d's fused conv + SiLU (what mamba_ssm trains with when it is installed), or None."""
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError:
        return None
    return lambda x, w, b: causal_conv1d_fn(x, w, b, activation="silu")


def fused_with(bwd, fwd="shifted"):
    """The fused path with forward kernel ``fwd`` ("shifted" or "cols") and backward kernel
    ``bwd`` ("taps", "cols" or "recompute"), causal_conv.LAUNCH."""
    def fn(x, w, b):
        causal_conv.LAUNCH.update(fwd=fwd, bwd=bwd)
        return causal_conv.causal_conv1d_silu(x, w, b, fused=True)
    return fn


def ref(x, w, b):
    # PyTorch's conv1d wants one dtype: under autocast, as in the mixer
    with torch.autocast("cuda", dtype=x.dtype):
        return causal_conv.causal_conv1d_silu_reference(x, w, b)


def sweep_launch(x, w, bias, up):
    """Every launch shape of the fused path on one input; the fastest forward+backward is kept."""
    sweep = []
    for bd in (2, 4, 8):
        for bt in (256, 512, 1024):
            for warps in (4, 8):
                causal_conv.LAUNCH.update(block_d=bd, block_t=bt, num_warps=warps)
                f, fb = time_pair(fused_with(causal_conv.LAUNCH["bwd"], causal_conv.LAUNCH["fwd"]), x, w, bias, up)
                sweep.append({"block_d": bd, "block_t": bt, "num_warps": warps, "fwd_ms": f, "fwdbwd_ms": fb})
    best = min(sweep, key=lambda r: r["fwdbwd_ms"])
    causal_conv.LAUNCH.update({k: best[k] for k in ("block_d", "block_t", "num_warps")})
    return sweep, best


def main():
    ap = bench_parser("results/conv_gpu.json")
    ap.add_argument("--sweep", action="store_true", help="time every launch shape first and keep the fastest")
    args = ap.parse_args()
    prov = bench_provenance(__file__, args)
    bw = copy_bandwidth()
    dtype = torch.bfloat16
    default = dict(causal_conv.LAUNCH)
    sweep, best = sweep_launch(*inputs(SHAPES[0], dtype)) if args.sweep else ([], default)
    contenders = {"fused_taps": fused_with("taps"), "fused_cols": fused_with("cols", "cols"),
                  "fused_recompute": fused_with("recompute"), "torch": ref}
    peer = peer_conv()
    if peer is not None:
        contenders["causal_conv1d"] = peer
    rows = []
    for shape in SHAPES:
        b, d, l, k = shape
        x, w, bias, up = inputs(shape, dtype)
        with torch.no_grad():
            want = ref(x, w, bias).float()
            errs = {name: ((fn(x, w, bias).float() - want).norm() / want.norm()).item()
                    for name, fn in contenders.items()}
        n = b * d * l * 2                                   # bytes of one (b, d, l) bf16 tensor
        row = {"shape": [b, d, l, k], "dtype": "bfloat16", "floor_fwd_ms": 2 * n / bw * 1e3,
               "floor_fwdbwd_ms": 5 * n / bw * 1e3, "rel_err_vs_torch": errs}
        for name, fn in contenders.items():
            f_ms, fb_ms = time_pair(fn, x, w, bias, up)
            ev_f, ev_fb = time_pair(fn, x, w, bias, up, kernels_only=False)
            row[name] = {"fwd_ms": f_ms, "fwdbwd_ms": fb_ms, "fwd_x_floor": f_ms / row["floor_fwd_ms"],
                         "fwdbwd_x_floor": fb_ms / row["floor_fwdbwd_ms"],
                         "event_ms": {"fwd": ev_f, "fwdbwd": ev_fb}}
        if peer is not None:
            row["ratio_fwdbwd_vs_causal_conv1d"] = {name: row[name]["fwdbwd_ms"] / row["causal_conv1d"]["fwdbwd_ms"]
                                                    for name in contenders}
        rows.append(row)
        print(json.dumps(row), flush=True)
    causal_conv.LAUNCH.update(default)
    out = {**prov, "copy_bandwidth_tb_s": bw / 1e12, "launch_default": default, "launch_chosen": best,
           "causal_conv1d": peer is not None, "sweep": sweep, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
