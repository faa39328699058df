"""Where a training step's GPU time goes: tokendyn's MambaLM (triton scan) and mamba_ssm's
MambaLMHeadModel, the configuration of benchmarks/train_gpu.py, under torch.profiler.

    python benchmarks/profile_train_gpu.py --out results/profile_train_gpu.json

For each model: warm-up steps, then ``--steps`` profiled steps; the JSON holds, per model,
the CUDA kernel time per step grouped into coarse parts (scan, matmul, norm and
elementwise, conv, loss, optimiser) and the 30 kernels with the most time, and the 30
PyTorch operators (by input shapes) whose kernels took the most.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import bench_parser, bench_provenance  # noqa: E402 -- after the sys.path setup
from train_gpu import build_mamba_ssm, build_tokendyn, setup, train_step  # noqa: E402 -- after the sys.path setup

# kernel-name fragments -> part; the first match wins
PARTS = [
    ("scan", ("scan",)),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("loss", ("softmax", "nll", "cross_entropy", "log_softmax")),
    ("matmul", ("gemm", "cutlass", "sm90", "sm80", "nvjet", "xmma", "cublas", "splitk")),
    ("conv", ("conv", "depthwise")),
    ("norm", ("norm", "rms", "layer_norm")),
    ("reduce", ("reduce",)),
    ("copy_cast", ("copy", "cast", "cat", "fill")),
]


def part_of(name: str) -> str:
    low = name.lower()
    for part, keys in PARTS:
        if any(k in low for k in keys):
            return part
    return "elementwise_other"


def profile_model(build, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model, opt, x, y = setup(build())
    for _ in range(warmup):
        train_step(model, opt, x, y)
    torch.cuda.synchronize()
    # host side: the time to enqueue one step, and back-to-back steps with one sync at the end;
    # if the first is close to the second, the step is bound by the CPU launching kernels
    import time
    enqueue, t0 = [], time.perf_counter()
    for _ in range(steps):
        t1 = time.perf_counter()
        train_step(model, opt, x, y)
        enqueue.append(time.perf_counter() - t1)
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / steps
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        for _ in range(steps):
            train_step(model, opt, x, y)
        torch.cuda.synchronize()
    per_kernel = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        # "Optimizer.step#AdamW.step" is an annotation spanning kernels, not a kernel
        if ev.device_type == torch.autograd.DeviceType.CUDA and "#" not in ev.name:
            per_kernel[ev.name][0] += ev.device_time / 1e3 / steps   # ms per step
            per_kernel[ev.name][1] += 1
    parts = defaultdict(float)
    for name, (ms, _) in per_kernel.items():
        parts[part_of(name)] += ms
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:30]
    # the PyTorch operators (with their input shapes) that launched the most GPU time
    ops = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_device_time_total)[:30]
    cpu_ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]
    return {"kernel_ms_per_step": sum(parts.values()),
            "host_enqueue_ms_per_step": 1e3 * min(enqueue), "wall_ms_per_step_one_sync": 1e3 * wall,
            "top_cpu_ops": [{"op": e.key, "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                             "calls_per_step": e.count / steps} for e in cpu_ops],
            "kernel_launches_per_step": sum(c for _, c in per_kernel.values()) / steps,
            "parts_ms_per_step": dict(sorted(parts.items(), key=lambda kv: -kv[1])),
            "top_kernels": [{"name": n[:160], "ms_per_step": ms, "calls_per_step": c / steps}
                            for n, (ms, c) in top],
            "top_ops": [{"op": e.key, "shapes": str(e.input_shapes)[:200],
                         "self_ms_per_step": e.self_device_time_total / 1e3 / steps,
                         "calls_per_step": e.count / steps} for e in ops]}


def main():
    ap = bench_parser("results/profile_train_gpu.json")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    prov = bench_provenance(__file__, args)
    results = {}
    for name, build in [("tokendyn_triton", lambda: build_tokendyn("triton")), ("mamba_ssm", build_mamba_ssm)]:
        try:
            results[name] = profile_model(build, args.steps, args.warmup)
        except Exception as exc:  # keep the other model's profile
            results[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        torch.cuda.empty_cache()
        r = results[name]
        print(f"== {name}: {r.get('kernel_ms_per_step', float('nan')):.1f} ms of kernels per step, "
              f"{r.get('kernel_launches_per_step', 0):.0f} launches; host enqueue "
              f"{r.get('host_enqueue_ms_per_step', float('nan')):.1f} ms, wall with one sync "
              f"{r.get('wall_ms_per_step_one_sync', float('nan')):.1f} ms")
        for k in r.get("top_cpu_ops", []):
            print(f"   cpu {k['self_cpu_ms_per_step']:8.3f} ms {k['calls_per_step']:6.0f}x  {k['op']}")
        for part, ms in r.get("parts_ms_per_step", {}).items():
            print(f"   {part:>18} {ms:8.2f} ms")
        for k in r.get("top_kernels", []):
            print(f"   {k['ms_per_step']:8.3f} ms {k['calls_per_step']:6.0f}x  {k['name'][:110]}")
        for k in r.get("top_ops", []):
            print(f"   {k['self_ms_per_step']:8.3f} ms {k['calls_per_step']:6.0f}x  {k['op']} {k['shapes'][:120]}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({**prov, "results": results}, indent=2))


if __name__ == "__main__":
    main()
