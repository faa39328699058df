"""Shared by the benchmark scripts: the median wall time of repeated calls."""

from __future__ import annotations

import statistics
import time


def median_time(fn, repeats: int) -> tuple[float, object]:
    """Call ``fn`` ``repeats`` times; return (median seconds, last result)."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def gpu_kernel_ms(fn, iters: int = 20) -> float:
    """Milliseconds of GPU kernel time per call of ``fn`` (torch.profiler, summed over kernels).

    Unlike CUDA-event timing this does not count the GPU waiting for the host, so it measures
    the kernels even where launching them costs more than running them.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    total_us = sum(ev.device_time for ev in prof.events()
                   if ev.device_type == torch.autograd.DeviceType.CUDA and "#" not in ev.name)
    return total_us / 1e3 / iters


def events_ms(call, reps: int) -> float:
    """Mean milliseconds per call over ``reps`` back-to-back calls, by CUDA events (host and
    kernels together, as a user waits for them)."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        call()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps
