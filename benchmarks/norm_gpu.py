"""The block's Add -> RMSNorm -> in_proj node on one GPU: the Triton kernels against PyTorch's
add, norm and cast inside the same node, in one run.

    python benchmarks/norm_gpu.py --commit $(git rev-parse HEAD) --out results/norm_gpu.json

Shapes: the 129M training benchmark's layer (batch 8 × 1,024 tokens, d_model 768, in_proj to
2 × 1,536) and the lm-scenarios full scale's (batch 32). The block input h is bf16 (the previous
mixer's output under autocast), the stream float32, every input requiring grad; the forward and
backward send a gradient to the stream as the next block's add does. Times: GPU kernel time per
call from the profiler (kernels only; the in_proj products are the same in both) and CUDA-event
time of back-to-back calls (host included: the Triton path launches fewer kernels but each
Triton launch costs the host more than an ATen one). Floor of the norm's own passes: forward
reads h and the stream and writes the stream and the bf16 copy; the backward reads the stream,
the normed gradient and the stream's gradient and writes the stream's and h's gradients.
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

from tokendyn.ops import norm_linear  # noqa: E402 -- after the sys.path setup

SHAPES = [(8, 1024, 768, 3072), (32, 1024, 768, 3072)]     # batch, L, d_model, in_proj outputs


def inputs(shape):
    b, l, d, out = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(b, l, d, generator=g, device="cuda").to(torch.bfloat16).requires_grad_()
    res = torch.randn(b, l, d, generator=g, device="cuda").requires_grad_()
    gain = (1 + 0.1 * torch.randn(d, generator=g, device="cuda")).requires_grad_()
    weight = (torch.randn(out, d, generator=g, device="cuda") / d**0.5).requires_grad_()
    dy = torch.randn(b, out, l, generator=g, device="cuda").to(torch.bfloat16)
    dr = torch.randn(b, l, d, generator=g, device="cuda")
    return (h, res, gain, weight), (dy, dr)


def contender(fused: bool):
    def fwd(h, res, gain, weight):
        norm_linear.LAUNCH["fused"] = fused
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return norm_linear.add_rms_norm_linear(h, res, gain, 1e-5, weight, fused=True)
    return fwd


def times(fn, args, grads) -> dict:
    def f():
        with torch.no_grad():
            fn(*args)

    def fb():
        torch.autograd.grad(fn(*args), args, grads)
    return {"fwd_kernel_ms": gpu_kernel_ms(f), "fwdbwd_kernel_ms": gpu_kernel_ms(fb),
            "fwd_event_ms": do_bench(f, warmup=20, rep=200, return_mode="median"),
            "fwdbwd_event_ms": do_bench(fb, warmup=20, rep=200, return_mode="median")}


def main():
    ap = bench_parser("results/norm_gpu.json")
    args = ap.parse_args()
    prov = bench_provenance(__file__, args)
    bw = copy_bandwidth()
    rows = []
    for shape in SHAPES:
        leaves, grads = inputs(shape)
        b, l, d, _ = shape
        with torch.no_grad():
            got = contender(True)(*leaves)[0].float()
            want = contender(False)(*leaves)[0].float()
        n = b * l * d
        row = {"shape": list(shape), "rel_err_y_vs_torch": ((got - want).norm() / want.norm()).item(),
               "floor_norm_fwd_ms": n * (2 + 4 + 4 + 2) / bw * 1e3,
               "floor_norm_bwd_ms": n * (4 + 2 + 4 + 4 + 2) / bw * 1e3}
        for name, fused in (("triton", True), ("torch", False)):
            row[name] = times(contender(fused), leaves, grads)
        row["ratio_fwdbwd_kernel_triton_over_torch"] = (row["triton"]["fwdbwd_kernel_ms"]
                                                        / row["torch"]["fwdbwd_kernel_ms"])
        row["ratio_fwdbwd_event_triton_over_torch"] = (row["triton"]["fwdbwd_event_ms"]
                                                       / row["torch"]["fwdbwd_event_ms"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    norm_linear.LAUNCH["fused"] = True
    out = {**prov, "copy_bandwidth_tb_s": bw / 1e12, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
