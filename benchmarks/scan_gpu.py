"""Selective scan on one GPU: tokendyn's triton backend vs mamba_ssm's CUDA kernel vs the
chunked PyTorch backend, in one run, with the memory floor measured in the same run.

    python benchmarks/scan_gpu.py --commit $(git rev-parse HEAD) --out results/scan_gpu.json [--sweep]

Every case uses delta_softplus, z gating, D and delta_bias (the models' call). Times are
medians of triton.testing.do_bench (CUDA events). ``floor_fwd_ms`` is the forward's bytes
(u, delta, z, B, C read once, out written once) over the copy bandwidth measured here.
``--sweep`` first times launch shapes of the triton kernels at (8, 1536, 2048, 16) bf16 and
uses the fastest for the table (the sweep is recorded in the JSON).
mamba_ssm must be importable (``pip install mamba-ssm`` builds its CUDA kernel); without it
its columns are null.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokendyn.ops import triton_scan  # noqa: E402 -- after the sys.path setup
from tokendyn.provenance import provenance  # noqa: E402 -- after the sys.path setup

SHAPES = [((8, 1536, 2048, 16), torch.bfloat16), ((8, 1536, 2048, 16), torch.float32),
          ((2, 1536, 8192, 16), torch.bfloat16), ((1, 2048, 65536, 16), torch.bfloat16)]
MAIN = ((8, 1536, 2048, 16), torch.bfloat16)
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float16: "float16"}


def copy_bandwidth() -> float:
    """Bytes per second of a 1 GiB device-to-device copy, counting read plus write."""
    x = torch.randn(2**28, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=50, rep=300, return_mode="median")
    return 2 * 2**28 * 4 / (ms * 1e-3)


def make_inputs(shape, dtype, seed=0):
    """Mamba-like inputs: A = -(1..N) (S4D-real init), Δ = softplus(raw + bias) ~ 0.01-0.1."""
    b, d, l, n = shape
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rn(*s):
        return torch.randn(*s, generator=g, device="cuda")

    return {
        "u": rn(b, d, l).to(dtype),
        "delta": (rn(b, d, l) * 0.5).to(dtype),
        "A": -torch.arange(1, n + 1, device="cuda", dtype=torch.float32).repeat(d, 1),
        "B": rn(b, n, l).to(dtype),
        "C": rn(b, n, l).to(dtype),
        "D": rn(d),
        "z": rn(b, d, l).to(dtype),
        "delta_bias": torch.log(torch.expm1(torch.rand(d, generator=g, device="cuda") * 0.09 + 0.01)),
    }


def floor_bytes(shape, dtype) -> int:
    b, d, l, n = shape
    e = torch.empty((), dtype=dtype).element_size()
    return (3 * b * d * l + 2 * b * n * l + b * d * l) * e + (d * n + 2 * d) * 4


def implementations():
    impls = {"tokendyn": triton_scan.selective_scan_triton}
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        impls["mamba_ssm"] = selective_scan_fn
    except ImportError as exc:
        print(f"mamba_ssm not available: {exc}")
    try:
        from tokendyn.ops.chunked import selective_scan_chunked
        impls["chunked"] = selective_scan_chunked
    except ImportError as exc:
        print(f"chunked backend not available: {exc}")
    return impls


def time_fwd(fn, t, rep=200):
    with torch.no_grad():
        return do_bench(lambda: fn(**t, delta_softplus=True), warmup=25, rep=rep, return_mode="median")


def time_fwdbwd(fn, t, rep=200):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in t.items()}
    # the same upstream gradient for every implementation, so their gradients compare
    gen = torch.Generator(device="cuda").manual_seed(1)
    g = torch.randn(t["u"].shape, device="cuda", generator=gen).to(t["u"].dtype)

    def step():
        fn(**leaves, delta_softplus=True).backward(g)

    ms = do_bench(step, warmup=25, rep=rep, grad_to_none=list(leaves.values()), return_mode="median")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    grads = {k: v.grad.detach().clone() for k, v in leaves.items()}
    return ms, peak, grads


def rel(x, ref):
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm()).item()


def sweep(log):
    """Launch shapes of the chunked Triton kernels (and the sequential forward) at MAIN."""
    shape, dtype = MAIN
    t = make_inputs(shape, dtype)
    rows = []
    fwd_cfgs = [dict(block_d=bd, chunk=c, fwd_warps=w)
                for bd, c, w in [(16, 128, 4), (8, 128, 2), (16, 128, 2), (8, 128, 1), (4, 128, 1), (16, 256, 4)]]
    for cfg in fwd_cfgs:
        with triton_scan.scan_config(**cfg):
            try:
                ms = time_fwd(triton_scan.selective_scan_triton, t)
            except Exception as exc:  # a launch shape that does not compile is skipped
                log(f"fwd {cfg}: failed {type(exc).__name__}: {str(exc)[:200]}")
                continue
        rows.append({"kind": "fwd", **cfg, "ms": ms})
        log(f"fwd {cfg}: {ms:.3f} ms")
    best_f = min((r for r in rows if r["kind"] == "fwd"), key=lambda r: r["ms"])
    for chunk, bd, w in [(128, 4, 1), (128, 2, 1), (128, 1, 1), (128, 8, 1), (128, 4, 2), (128, 2, 2), (64, 4, 1),
                         (256, 4, 1)]:
        cfg = dict(block_d=best_f["block_d"], chunk=chunk, fwd_warps=best_f["fwd_warps"],
                   bwd_block_d=bd, bwd_warps=w)
        with triton_scan.scan_config(**cfg):
            try:
                ms, peak, _ = time_fwdbwd(triton_scan.selective_scan_triton, t)
            except Exception as exc:
                log(f"fwdbwd {cfg}: failed {type(exc).__name__}: {str(exc)[:200]}")
                continue
        rows.append({"kind": "fwdbwd", **cfg, "ms": ms})
        log(f"fwdbwd {cfg}: {ms:.3f} ms")
    best_b = min((r for r in rows if r["kind"] == "fwdbwd"), key=lambda r: r["ms"])
    best = {k: best_b[k] for k in ("block_d", "chunk", "fwd_warps", "bwd_block_d", "bwd_warps")}
    return rows, best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/scan_gpu.json")
    ap.add_argument("--commit", default=None)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--skip-chunked-above", type=int, default=2**31,
                    help="skip the chunked backend where batch*dim*length exceeds this")
    args = ap.parse_args()
    logs = []

    def log(msg):
        print(msg, flush=True)
        logs.append(msg)

    prov = provenance(" ".join(["python"] + sys.argv))
    if args.commit:
        prov["commit"] = args.commit
    bw = copy_bandwidth()
    log(f"copy bandwidth {bw / 1e12:.3f} TB/s (read + write)")
    sweep_rows, best = ([], None)
    if args.sweep:
        sweep_rows, best = sweep(log)
        log(f"chosen launch shape {best}")
    cfg = best or {}
    impls = implementations()
    rows = []
    for shape, dtype in SHAPES:
        t = make_inputs(shape, dtype)
        b, d, l, n = shape
        row = {"shape": list(shape), "dtype": DTYPE_NAMES[dtype]}
        grads = {}
        outs = {}
        for name, fn in impls.items():
            if name == "chunked" and b * d * l > args.skip_chunked_above:
                row[f"{name}_fwd_ms"] = row[f"{name}_fwdbwd_ms"] = None
                continue
            ctx = triton_scan.scan_config(**cfg) if name == "tokendyn" else _null()
            with ctx:
                try:
                    with torch.no_grad():
                        outs[name] = fn(**t, delta_softplus=True)
                    fwd = time_fwd(fn, t)
                    fb, peak, grads[name] = time_fwdbwd(fn, t)
                except torch.cuda.OutOfMemoryError:
                    log(f"{name} {shape} {dtype}: out of memory")
                    torch.cuda.empty_cache()
                    row[f"{name}_fwd_ms"] = row[f"{name}_fwdbwd_ms"] = None
                    continue
            row[f"{name}_fwd_ms"] = fwd
            row[f"{name}_fwdbwd_ms"] = fb
            row[f"{name}_peak_mem_fwdbwd_gib"] = peak / 2**30
            torch.cuda.empty_cache()
        m = row.get("mamba_ssm_fwd_ms")
        row["ratio_fwd"] = row["tokendyn_fwd_ms"] / m if m else None
        mb = row.get("mamba_ssm_fwdbwd_ms")
        row["ratio_fwdbwd"] = row["tokendyn_fwdbwd_ms"] / mb if mb else None
        row["floor_fwd_ms"] = floor_bytes(shape, dtype) / bw * 1e3
        row["tokendyn_fwd_pct_of_floor"] = 100 * row["floor_fwd_ms"] / row["tokendyn_fwd_ms"]
        if m:
            row["mamba_ssm_fwd_pct_of_floor"] = 100 * row["floor_fwd_ms"] / m
        if "mamba_ssm" in outs:
            row["rel_diff_out_vs_mamba_ssm"] = rel(outs["tokendyn"], outs["mamba_ssm"])
            row["rel_diff_grads_vs_mamba_ssm"] = {k: rel(grads["tokendyn"][k], grads["mamba_ssm"][k])
                                                  for k in grads["tokendyn"]} if "mamba_ssm" in grads else None
        rows.append(row)
        log(json.dumps(row))
        del t, outs, grads
        torch.cuda.empty_cache()
    result = {**prov, "copy_bandwidth_tb_s": bw / 1e12, "launch_shape": cfg or "defaults",
              "default_launch_shape": vars(triton_scan.ScanConfig()), "rows": rows, "sweep": sweep_rows,
              "notes": "delta_softplus, z, D and delta_bias on; A float32 = -(1..N); times are medians "
                       "of triton.testing.do_bench; peak memory is the extra allocation of one fwd+bwd."}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    log("")
    log(f"{'shape':>22} {'dtype':>9} {'td fwd':>8} {'ms fwd':>8} {'td f+b':>8} {'ms f+b':>8} "
        f"{'r fwd':>6} {'r f+b':>6} {'floor':>7} {'ch fwd':>8} {'ch f+b':>8}")
    for r in rows:
        def f(v):
            return "    -   " if v is None else f"{v:8.3f}"

        log(f"{str(tuple(r['shape'])):>22} {r['dtype']:>9} {f(r['tokendyn_fwd_ms'])} {f(r.get('mamba_ssm_fwd_ms'))} "
            f"{f(r['tokendyn_fwdbwd_ms'])} {f(r.get('mamba_ssm_fwdbwd_ms'))} "
            f"{(r['ratio_fwd'] or 0):6.2f} {(r['ratio_fwdbwd'] or 0):6.2f} {r['floor_fwd_ms']:7.3f} "
            f"{f(r.get('chunked_fwd_ms'))} {f(r.get('chunked_fwdbwd_ms'))}")


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


if __name__ == "__main__":
    main()
