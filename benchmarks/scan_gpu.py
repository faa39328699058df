"""Selective scan on one GPU: tokendyn's triton backend vs mamba_ssm's CUDA kernel vs the
chunked PyTorch backend, in one run, with the memory floor measured in the same run.

    python benchmarks/scan_gpu.py --commit $(git rev-parse HEAD) --out results/scan_gpu.json [--sweep]

Every case uses delta_softplus, z gating, D and delta_bias (the models' call), and every input
requires grad, in the forward too (as in training: the forward then runs the autograd path and
keeps what the backward needs). Timing: the implementations of a shape are timed in turn within
each round (interleaved, so that clock and thermal drift hit them alike), each one with CUDA
events around many back-to-back calls; the reported time is the median over the rounds of the
mean time per call. ``floor_fwd_ms`` is the forward's bytes (u, delta, z, B, C read once, out
written once) over the copy bandwidth measured here.

``--sweep`` first times launch shapes of the triton kernels and the number of segments the
length is split into (ScanConfig.segments, bwd_segments; 0 = the rule in
tokendyn.ops.triton_scan.plan_launch), at the main shape and at the two long-sequence shapes,
with mamba_ssm interleaved as the yardstick; the table then uses the main shape's fastest
launch shape with the segment rule (the sweep, with the rule's choice beside the best forced
count, is recorded in the JSON). The JSON is rewritten after every swept shape and table row
("complete": false until the last), so a run cut short keeps what it measured.
mamba_ssm must be importable (``pip install mamba-ssm`` builds its CUDA kernel); without it
its columns are null.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _device_runs as device_runs  # noqa: E402
from _cli import bench_parser, bench_provenance  # noqa: E402 -- after the sys.path setup
from _timing import events_ms  # noqa: E402 -- after the sys.path setup

from tokendyn.ops import triton_scan  # noqa: E402 -- after the sys.path setup

BF16, FP32 = torch.bfloat16, torch.float32
MAIN = ((8, 1536, 2048, 16), BF16)
LONG = [((2, 1536, 8192, 16), BF16), ((1, 2048, 65536, 16), BF16)]
SHAPES = [MAIN, ((8, 1536, 2048, 16), FP32), ((16, 2048, 1024, 16), BF16), *LONG,
          ((4, 5120, 2048, 16), BF16)]
DEVICE = "cuda"
DTYPE_NAMES = {BF16: "bfloat16", FP32: "float32", torch.float16: "float16"}
LAUNCH_KEYS = ("block_d", "chunk", "fwd_chunk", "fwd_warps", "segments", "bwd_block_d", "bwd_warps", "bwd_segments")

# sweep grids: forward (block_d, forward chunk, warps); forward+backward (chunk, bwd_block_d,
# bwd_warps). BD 8 / 4 warps (forward) and BD 2 / 1 warp (backward) are the shapes whose kernels
# do not spill registers when compiled for sm_90 (NOTES_triton.md, v6). The forward shapes with
# 1-2 channels over 256-1024 steps keep 8 steps per thread, as BD 8 / T 128 / 4 warps does, at
# 146-152 registers instead of 255, so more programs fit on a multiprocessor (v8); a forward
# chunk over the backward's (128) saves h every 128 steps for the backward all the same.
FWD_LAUNCH = {"main": [(16, 128, 4), (8, 128, 4), (8, 128, 2), (4, 128, 1), (4, 128, 2), (16, 256, 4),
                       (8, 64, 2), (2, 128, 1), (2, 256, 2), (2, 512, 4), (1, 1024, 4)],
              "long": [(16, 128, 4), (8, 128, 4), (8, 128, 2), (4, 128, 1), (2, 128, 1), (2, 256, 2),
                       (2, 512, 4), (1, 1024, 4), (1, 512, 2)]}
BWD_CHUNK = triton_scan.ScanConfig().chunk      # the default backward chunk (128)
# backward BD 1 / T 256 / 1 warp (226 registers) and BD 2 / T 256 / 2 warps (255, no spill) hold 8 steps
# per thread where the default BD 4 / T 128 / 1 warp holds 4 per channel row (v8)
BWD_LAUNCH = {"main": [(128, 4, 1), (128, 2, 1), (128, 1, 1), (128, 8, 1), (128, 4, 2), (64, 4, 1),
                       (64, 2, 1), (256, 4, 1), (256, 1, 1), (256, 2, 2)],
              "long": [(128, 4, 1), (128, 2, 1), (128, 8, 1), (128, 4, 2), (128, 1, 1), (256, 1, 1), (256, 2, 2)]}
# 0: the rule's choice; 1: unsplit (channels per program shrink instead where the grid is short)
SEGMENTS = {"main": [0, 1, 2, 4], "long": [0, 1, 2, 4, 8, 16]}


def copy_bandwidth() -> float:
    """Bytes per second of a 1 GiB device-to-device copy, counting read plus write."""
    x = torch.randn(2**28, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=50, rep=300, return_mode="median")
    return 2 * 2**28 * 4 / (ms * 1e-3)


def make_inputs(shape, dtype, seed=0):
    """Mamba-like inputs: A = -(1..N) (S4D-real init), Δ = softplus(raw + bias) ~ 0.01-0.1."""
    b, d, l, n = shape
    g = torch.Generator(device=DEVICE).manual_seed(seed)

    def rn(*s):
        return torch.randn(*s, generator=g, device=DEVICE)

    return {
        "u": rn(b, d, l).to(dtype),
        "delta": (rn(b, d, l) * 0.5).to(dtype),
        "A": -torch.arange(1, n + 1, device=DEVICE, dtype=torch.float32).repeat(d, 1),
        "B": rn(b, n, l).to(dtype),
        "C": rn(b, n, l).to(dtype),
        "D": rn(d),
        "z": rn(b, d, l).to(dtype),
        "delta_bias": torch.log(torch.expm1(torch.rand(d, generator=g, device=DEVICE) * 0.09 + 0.01)),
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


class Leaves:
    """One shape's inputs as leaves requiring grad, and the upstream gradient of the output
    (the same for every implementation, so their gradients compare). Shared by the cases of a
    shape: each forward+backward first sets the gradients to None."""

    def __init__(self, inputs):
        self.inputs = inputs
        self.leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        gen = torch.Generator(device=DEVICE).manual_seed(1)
        u = inputs["u"]
        self.g = torch.randn(u.shape, device=DEVICE, generator=gen).to(u.dtype)


class Case:
    """One implementation on one shape's :class:`Leaves`; ``cfg`` (tokendyn only) is the launch
    shape its calls run under; ``exact``: that shape as given, the long-sequence rule
    (triton_scan.shape_config) off, as a sweep needs."""

    def __init__(self, fn, data: Leaves, cfg=None, exact=False):
        self.fn, self.cfg = fn, cfg
        if cfg and exact:
            self.cfg = {"long_below_warps_per_sm": 0, **cfg}
        self.leaves, self.g = data.leaves, data.g

    def context(self):
        return triton_scan.scan_config(**self.cfg) if self.cfg else contextlib.nullcontext()

    def fwd(self):
        return self.fn(**self.leaves, delta_softplus=True)

    def fwdbwd(self):
        for v in self.leaves.values():
            v.grad = None
        self.fn(**self.leaves, delta_softplus=True).backward(self.g)

    def peak_and_grads(self):
        """Extra memory of one forward+backward (bytes) and its gradients."""
        with self.context():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            self.fwdbwd()
            torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        return peak, {k: v.grad.detach().clone() for k, v in self.leaves.items()}


def interleaved(cases: dict, mode: str, rounds: int, round_ms: float, log=None) -> dict:
    """Time ``mode`` ("fwd" or "fwdbwd") of every case, in ``rounds`` rounds that each time
    every case once (many calls between two events, about ``round_ms`` per case). Returns
    name -> {"ms": median over rounds, "rounds": [...], "reps": calls per round}; a case that
    fails (a launch shape that does not compile, out of memory) is logged and left out."""
    reps, ok = {}, {}
    for name, case in cases.items():
        call = getattr(case, mode)
        try:
            with case.context():
                call()                                   # compile, allocator warm-up
                torch.cuda.synchronize()
                est = events_ms(call, 2)
        except Exception as exc:  # noqa: BLE001 -- recorded, the sweep goes on
            if log:
                log(f"{mode} {name}: failed {type(exc).__name__}: {str(exc)[:200]}")
            torch.cuda.empty_cache()
            continue
        reps[name] = max(1, min(2000, round(round_ms / max(est, 1e-3))))
        ok[name] = case
    samples = {name: [] for name in ok}
    for _ in range(rounds):
        for name, case in ok.items():
            with case.context():
                samples[name].append(events_ms(getattr(case, mode), reps[name]))
    return {name: {"ms": statistics.median(v), "rounds": v, "reps": reps[name]} for name, v in samples.items()}


def rel(x, ref):
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm()).item()


def _name(cfg: dict) -> str:
    return " ".join(f"{k}={cfg[k]}" for k in LAUNCH_KEYS if k in cfg)


def _chunks(fwd_chunk: int, bwd_chunk: int) -> dict:
    """chunk and fwd_chunk of a launch shape whose forward scans ``fwd_chunk`` steps at a time
    and whose backward ``bwd_chunk`` (cut to ``fwd_chunk`` where longer: the backward's chunk
    may not exceed the forward's; the backward sweep passes a forward chunk of at least it)."""
    chunk = min(fwd_chunk, bwd_chunk)
    return dict(chunk=chunk, fwd_chunk=fwd_chunk if fwd_chunk > chunk else 0)


def _rule_segments(shape, cfg: dict, backward: bool) -> int:
    """The segment count plan_launch picks for ``cfg`` on this GPU (segments = 0)."""
    b, d, l, _ = shape
    full = triton_scan.ScanConfig(**{k: v for k, v in cfg.items() if k in LAUNCH_KEYS})
    n_chunks = -(-l // (triton_scan.chunk_for(l, full) if backward else triton_scan.fwd_chunk_for(l, full)))
    bd, warps = (full.bwd_block_d, full.bwd_warps) if backward else (full.block_d, full.fwd_warps)
    lp = triton_scan.plan_launch(b, d, n_chunks, bd, warps, 0, triton_scan.multiprocessors(torch.device(DEVICE)),
                                 full.warps_per_sm, full.split_below_warps_per_sm, full.min_split)
    return lp.segments


def _timed_rows(cands: dict, t: Leaves, peer, kind: str, shape, dtype, rounds, round_ms, log) -> list[dict]:
    """Time every launch shape of ``cands`` (name -> cfg) in ``kind`` ("fwd" or "fwdbwd"), with
    mamba_ssm (``peer``) interleaved: a row per launch shape that ran, with the segment count the
    rule would pick for it (``rule_segments`` or ``rule_bwd_segments``) and the peer's time."""
    cases = {name: Case(triton_scan.selective_scan_triton, t, cfg, exact=True) for name, cfg in cands.items()}
    if peer is not None:
        cases["mamba_ssm"] = Case(peer, t)
    res = interleaved(cases, kind, rounds, round_ms, log)
    peer_ms = res.get("mamba_ssm", {}).get("ms")
    backward = kind == "fwdbwd"
    rows = []
    for name, cfg in cands.items():
        if name in res:
            rows.append({"shape": list(shape), "dtype": DTYPE_NAMES[dtype], "kind": kind, **cfg,
                         ("rule_bwd_segments" if backward else "rule_segments"): _rule_segments(shape, cfg, backward),
                         "ms": res[name]["ms"], "mamba_ssm_ms": peer_ms})
            log(f"{shape} {kind} {name}: {res[name]['ms']:.3f} ms (mamba_ssm {peer_ms})")
    del cases
    torch.cuda.empty_cache()
    return rows


def sweep_shape(shape, dtype, cls: str, peer, log, rounds=3, round_ms=30.0):
    """Forward launch shapes × segments, then (with the fastest forward) backward launch shapes
    × backward segments, at one shape; mamba_ssm (``peer``) interleaved in both."""
    t = Leaves(make_inputs(shape, dtype))
    fwd_cands = {}
    for bd, fwd_chunk, warps in FWD_LAUNCH[cls]:
        for seg in SEGMENTS[cls]:
            cfg = dict(block_d=bd, **_chunks(fwd_chunk, BWD_CHUNK), fwd_warps=warps, segments=seg)
            fwd_cands[_name(cfg)] = cfg
    rows = _timed_rows(fwd_cands, t, peer, "fwd", shape, dtype, rounds, round_ms, log)
    peer_fwd = rows[0]["mamba_ssm_ms"] if rows else None
    best_f = min(rows, key=lambda r: r["ms"])
    bwd_cands = {}
    best_fwd_chunk = best_f["fwd_chunk"] or best_f["chunk"]
    for chunk, bd, warps in BWD_LAUNCH[cls]:
        for seg in SEGMENTS[cls]:
            # the backward's chunk as swept; the forward's the best one's, or the backward's if longer
            cfg = dict(block_d=best_f["block_d"], **_chunks(max(best_fwd_chunk, chunk), chunk),
                       fwd_warps=best_f["fwd_warps"],
                       segments=best_f["segments"], bwd_block_d=bd, bwd_warps=warps, bwd_segments=seg)
            bwd_cands[_name(cfg)] = cfg
    bwd_rows = _timed_rows(bwd_cands, t, peer, "fwdbwd", shape, dtype, rounds, round_ms, log)
    peer_fb = bwd_rows[0]["mamba_ssm_ms"] if bwd_rows else None
    rows += bwd_rows
    del t
    best_b = min(bwd_rows, key=lambda r: r["ms"])
    summary = {"shape": list(shape), "dtype": DTYPE_NAMES[dtype],
               "best_fwd": {k: best_f[k] for k in ("block_d", "chunk", "fwd_chunk", "fwd_warps", "segments", "ms")},
               "best_fwdbwd": {k: best_b[k] for k in (*LAUNCH_KEYS, "ms")},
               "mamba_ssm_fwd_ms": peer_fwd, "mamba_ssm_fwdbwd_ms": peer_fb}
    # the rule against the best forced count, at the best launch shape
    rule_f = [r for r in rows if r["kind"] == "fwd" and r["segments"] == 0
              and all(r[k] == best_f[k] for k in ("block_d", "chunk", "fwd_chunk", "fwd_warps"))]
    rule_b = [r for r in rows if r["kind"] == "fwdbwd" and r["bwd_segments"] == 0
              and all(r[k] == best_b[k] for k in ("chunk", "bwd_block_d", "bwd_warps"))]
    summary["rule_fwd"] = {"segments": rule_f[0]["rule_segments"], "ms": rule_f[0]["ms"]} if rule_f else None
    summary["rule_fwdbwd"] = {"bwd_segments": rule_b[0]["rule_bwd_segments"], "ms": rule_b[0]["ms"]} if rule_b else None
    log(f"{shape} sweep: {json.dumps(summary)}")
    return rows, summary


def table_launch_shape(summaries) -> dict:
    """The table's launch shape: the main shape's fastest forward+backward; the segment counts
    are left to the rule (plan_launch) everywhere."""
    main = summaries[0]["best_fwdbwd"]
    return {k: main[k] for k in ("block_d", "chunk", "fwd_chunk", "fwd_warps", "bwd_block_d", "bwd_warps")}


def table_row(shape, dtype, impls, cfg, args, log):
    data = Leaves(make_inputs(shape, dtype))
    t = data.inputs
    b, d, l, n = shape
    # the launch shape tokendyn's calls take here: the table's, or the long-sequence rule's
    used = triton_scan.shape_config(b, d, l, triton_scan.multiprocessors(torch.device(DEVICE)),
                                    replace(triton_scan.current_config(), **(cfg or {})))
    row = {"shape": list(shape), "dtype": DTYPE_NAMES[dtype],
           "launch": {k: getattr(used, k) for k in LAUNCH_KEYS}}
    cases = {}
    for name, fn in impls.items():
        if name == "chunked" and b * d * l > args.skip_chunked_above:
            continue
        cases[name] = Case(fn, data, cfg if name == "tokendyn" else None)
    for mode in ("fwd", "fwdbwd"):
        res = interleaved(cases, mode, args.rounds, args.round_ms, log)
        for name in impls:
            row[f"{name}_{mode}_ms"] = res[name]["ms"] if name in res else None
            if name in res:
                row[f"{name}_{mode}_rounds_ms"] = res[name]["rounds"]
    grads, outs = {}, {}
    for name, case in cases.items():
        try:
            row[f"{name}_peak_mem_fwdbwd_gib"], grads[name] = case.peak_and_grads()
            row[f"{name}_peak_mem_fwdbwd_gib"] /= 2**30
            with torch.no_grad(), case.context():
                outs[name] = case.fn(**t, delta_softplus=True)
        except torch.cuda.OutOfMemoryError:
            log(f"{name} {shape} {dtype}: out of memory")
        torch.cuda.empty_cache()
    m, mb = row.get("mamba_ssm_fwd_ms"), row.get("mamba_ssm_fwdbwd_ms")
    row["ratio_fwd"] = row["tokendyn_fwd_ms"] / m if m and row["tokendyn_fwd_ms"] else None
    row["ratio_fwdbwd"] = row["tokendyn_fwdbwd_ms"] / mb if mb and row["tokendyn_fwdbwd_ms"] else None
    row["floor_fwd_ms"] = floor_bytes(shape, dtype) / args.bandwidth * 1e3
    if row["tokendyn_fwd_ms"]:
        row["tokendyn_fwd_pct_of_floor"] = 100 * row["floor_fwd_ms"] / row["tokendyn_fwd_ms"]
    if m:
        row["mamba_ssm_fwd_pct_of_floor"] = 100 * row["floor_fwd_ms"] / m
    if "mamba_ssm" in outs and "tokendyn" in outs:
        row["rel_diff_out_vs_mamba_ssm"] = rel(outs["tokendyn"], outs["mamba_ssm"])
    if "mamba_ssm" in grads and "tokendyn" in grads:
        row["rel_diff_grads_vs_mamba_ssm"] = {k: rel(grads["tokendyn"][k], grads["mamba_ssm"][k])
                                              for k in grads["tokendyn"]}
    return row


def main():
    ap = bench_parser("results/scan_gpu.json")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds per shape (median reported)")
    ap.add_argument("--round-ms", type=float, default=60.0, help="time per implementation per round")
    ap.add_argument("--skip-chunked-above", type=int, default=26_000_000,
                    help="skip the chunked backend where batch*dim*length exceeds this (default: only "
                         "the (8, 1536, 2048) shapes)")
    args = ap.parse_args()
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", flush=True)

    prov = bench_provenance(__file__, args)
    args.bandwidth = copy_bandwidth()
    log(f"copy bandwidth {args.bandwidth / 1e12:.3f} TB/s (read + write)")
    impls = implementations()
    state = {"sweep_rows": [], "summaries": [], "rows": [], "cfg": {}}
    earlier = device_runs.load(Path(args.out))      # the other devices' runs stay beside this one

    def save(complete: bool):
        """The JSON so far (written after every step, so a run cut short keeps what it measured), as
        this device's run in the results file (benchmarks/_device_runs.py)."""
        result = {**prov, "complete": complete, "copy_bandwidth_tb_s": args.bandwidth / 1e12,
                  "launch_shape": state["cfg"] or "defaults",
                  "default_launch_shape": vars(triton_scan.ScanConfig()), "rows": state["rows"],
                  "sweep_summary": state["summaries"], "sweep": state["sweep_rows"],
                  "wall_s": time.perf_counter() - t0,
                  "notes": "delta_softplus, z, D and delta_bias on, every input requiring grad (forward "
                           "included); A float32 = -(1..N); implementations interleaved within "
                           f"{args.rounds} rounds, each timed by CUDA events over back-to-back calls "
                           f"(~{args.round_ms} ms per round), median over rounds; peak memory is the "
                           "extra allocation of one fwd+bwd; sweep: 3 rounds of ~30 ms."}
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(device_runs.merge(earlier, result, device_runs.scan_rows), indent=2))
        tmp.replace(out)

    if args.sweep:
        for (shape, dtype), cls in [(MAIN, "main"), *((s, "long") for s in LONG)]:
            r, summary = sweep_shape(shape, dtype, cls, impls.get("mamba_ssm"), log)
            state["sweep_rows"] += r
            state["summaries"].append(summary)
            save(False)
        state["cfg"] = table_launch_shape(state["summaries"])
        log(f"chosen launch shape {state['cfg']}")
    rows = state["rows"]
    for shape, dtype in SHAPES:
        row = table_row(shape, dtype, impls, state["cfg"], args, log)
        rows.append(row)
        log(json.dumps({k: v for k, v in row.items() if not k.endswith("_rounds_ms")}))
        torch.cuda.empty_cache()
        save(False)
    save(True)
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


if __name__ == "__main__":
    main()
