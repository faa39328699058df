"""Token generation on one GPU: tokendyn's ``generate`` (eager, and replayed from a CUDA graph)
vs mamba_ssm's ``MambaLMHeadModel.generate`` (``cg=True`` and ``cg=False``), the same weights in
both, in one run.

    python benchmarks/generate_gpu.py --out results/generate_gpu.json
    python benchmarks/generate_gpu.py --batches 1 --rounds 3 --skip-peer --out /tmp/quick.json

Configuration: the 129M model of benchmarks/train_gpu.py (d_model 768, 24 layers, vocabulary
50,280, tied embeddings), random init, bfloat16 weights, a prompt of 128 random token ids, 256
new tokens, greedy (mamba_ssm: top_k=1). mamba_ssm's model receives tokendyn's state_dict (the
same names). A generation is timed whole, prompt included, between two CUDA synchronisations;
every contender is called once untimed first (kernel compilation, graph capture: mamba_ssm's
cg=True captures per batch size and max_length on its first call). Then ``--rounds`` rounds
call every contender once each, in an order rotated by one per round; tokens/s =
batch * new tokens / median seconds.

Rows (one per batch): ``tokens_per_s`` (tokendyn with the CUDA graph), ``tokendyn_eager_tokens_per_s``,
``mamba_ssm_cg_tokens_per_s``, ``mamba_ssm_eager_tokens_per_s`` (null without mamba_ssm),
``ratio_tokens_per_s`` = tokendyn graph / mamba_ssm cg, ``graph_tokens_equal_eager`` (must be
true: the graph replays the eager step's kernels), ``fraction_equal_to_mamba_ssm`` (new tokens
equal to mamba_ssm cg's at the same position; bfloat16 rounding may make the two drift apart,
reported, not asserted). ``kernels``: microseconds per call of the fused one-token kernels and
of their PyTorch references at the model's shapes (median of rounds of back-to-back calls,
host launch included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import bench_parser, bench_provenance  # noqa: E402 -- after the sys.path setup
from train_gpu import D_MODEL, N_LAYER, VOCAB, build_mamba_ssm, build_tokendyn  # noqa: E402 -- after the sys.path setup

PROMPT, NEW_TOKENS = 128, 256
TD_GRAPH, TD_EAGER, PEER_CG, PEER_EAGER = "tokendyn_graph", "tokendyn_eager", "mamba_ssm_cg", "mamba_ssm_eager"


def parse_args(argv=None) -> argparse.Namespace:
    ap = bench_parser("results/generate_gpu.json", __doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds (each contender once per round)")
    ap.add_argument("--prompt", type=int, default=PROMPT)
    ap.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    ap.add_argument("--skip-peer", action="store_true", help="leave out mamba_ssm")
    ap.add_argument("--skip-kernels", action="store_true", help="leave out the fused-kernel timings")
    args = ap.parse_args(argv)
    try:
        args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        ap.error(f"--batches must be comma-separated integers, got {args.batches!r}")
    if not args.batches or min(args.batches) < 1:
        ap.error("--batches needs at least one positive batch size")
    if args.rounds < 1 or args.prompt < 1 or args.new_tokens < 1:
        ap.error("--rounds, --prompt and --new-tokens must be positive")
    return args


def build_models(skip_peer: bool):
    """tokendyn's model and (unless skipped or not importable) mamba_ssm's with the same weights,
    both bfloat16 on the GPU; the peer's slot holds an error string when it cannot run."""
    torch.manual_seed(0)
    td = build_tokendyn("auto")
    peer = None
    if not skip_peer:
        try:
            peer = build_mamba_ssm()
            peer.load_state_dict(td.state_dict())
            peer = peer.to(device="cuda", dtype=torch.bfloat16).eval()
        except Exception as exc:  # not installed or not runnable here: its columns stay null
            peer = f"{type(exc).__name__}: {str(exc)[:300]}"
    td = td.to(device="cuda", dtype=torch.bfloat16).eval()
    return td, peer


def contenders(td, peer, new_tokens: int) -> dict:
    from tokendyn.model import generate

    runs = {
        TD_EAGER: lambda ids: generate(td, ids, new_tokens, cuda_graph=False),
        TD_GRAPH: lambda ids: generate(td, ids, new_tokens, cuda_graph=True),
    }
    if peer is not None and not isinstance(peer, str):
        def peer_run(cg):
            return lambda ids: peer.generate(ids, max_length=ids.shape[1] + new_tokens, cg=cg, top_k=1,
                                             temperature=1.0)
        runs[PEER_CG] = peer_run(True)
        runs[PEER_EAGER] = peer_run(False)
    return runs


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, ids):
    """(seconds, result) of fn(ids), between two device synchronisations."""
    _sync()
    t0 = time.perf_counter()
    out = fn(ids)
    _sync()
    return time.perf_counter() - t0, out


def bench_batch(runs: dict, batch: int, args, device="cuda", vocab: int = VOCAB) -> dict:
    """One row: every contender on the same random prompt (batch, args.prompt)."""
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, vocab, (batch, args.prompt), generator=g).to(device)
    outs, errors, seconds = {}, {}, {name: [] for name in runs}
    for name, fn in runs.items():             # untimed first call: compilation, graph capture
        try:
            outs[name] = timed(fn, ids)[1]
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
    live = [n for n in runs if n not in errors]
    same_as_eager = True
    for r in range(args.rounds):
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for name in order:
            s, out = timed(runs[name], ids)
            seconds[name].append(s)
            if name == TD_GRAPH and TD_EAGER in outs:
                same_as_eager &= bool(torch.equal(out, outs[TD_EAGER]))
    tps = {n: (batch * args.new_tokens / statistics.median(seconds[n]) if seconds[n] else None) for n in runs}
    row = {"batch": batch, "tokens_per_s": tps.get(TD_GRAPH), "tokendyn_eager_tokens_per_s": tps.get(TD_EAGER),
           "mamba_ssm_cg_tokens_per_s": tps.get(PEER_CG), "mamba_ssm_eager_tokens_per_s": tps.get(PEER_EAGER),
           "ratio_tokens_per_s": None, "graph_tokens_equal_eager": None, "fraction_equal_to_mamba_ssm": None,
           "seconds_all": seconds, "errors": errors}
    if row["tokens_per_s"] and row["mamba_ssm_cg_tokens_per_s"]:
        row["ratio_tokens_per_s"] = row["tokens_per_s"] / row["mamba_ssm_cg_tokens_per_s"]
    if TD_GRAPH in outs and TD_EAGER in outs:
        row["graph_tokens_equal_eager"] = bool(torch.equal(outs[TD_GRAPH], outs[TD_EAGER])) and same_as_eager
    if TD_GRAPH in outs and PEER_CG in outs:
        a, b = outs[TD_GRAPH][:, args.prompt:], outs[PEER_CG][:, args.prompt:]
        if a.shape == b.shape:
            eq = a == b
            row["fraction_equal_to_mamba_ssm"] = eq.float().mean().item()
            # the first position where a row differs (new tokens; new_tokens when it never does)
            row["first_difference_per_row"] = [int(e.logical_not().nonzero()[0]) if not e.all() else a.shape[1]
                                              for e in eq]
        else:
            row["fraction_equal_to_mamba_ssm"] = f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    return row


def per_call_us(fn, calls=200, rounds=5) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(times)


def bench_kernels(td, batches) -> dict:
    """The fused one-token ops vs their references at the first layer's shapes (bfloat16)."""
    from tokendyn.ops.step import causal_conv1d_update, selective_state_update

    mixer = td.backbone.layers[0].mixer
    w, bias = mixer.conv1d.weight[:, 0, :], mixer.conv1d.bias
    A = -torch.exp(mixer.A_log.float())
    rows = []
    for b in batches:
        conv, ssm = mixer.allocate_state(b)
        g = torch.Generator(device="cuda").manual_seed(b)
        x = torch.randn(b, mixer.d_inner, generator=g, device="cuda").to(torch.bfloat16)
        dt = torch.randn(b, mixer.d_inner, generator=g, device="cuda").to(torch.bfloat16)
        z = torch.randn(b, mixer.d_inner, generator=g, device="cuda").to(torch.bfloat16)
        B = torch.randn(b, mixer.d_state, generator=g, device="cuda").to(torch.bfloat16)
        C = torch.randn(b, mixer.d_state, generator=g, device="cuda").to(torch.bfloat16)
        row = {"batch": b, "D": mixer.d_inner, "N": mixer.d_state, "d_conv": mixer.d_conv}
        for fused in (True, False):
            tag = "fused" if fused else "reference"
            row[f"conv_update_{tag}_us"] = per_call_us(partial(causal_conv1d_update, conv, x, w, bias, fused=fused))
            row[f"state_update_{tag}_us"] = per_call_us(partial(
                selective_state_update, ssm, x, dt, mixer.dt_proj.bias, A, B, C, mixer.D, z, fused=fused))
        rows.append(row)
    return {"dtype": "bfloat16", "rows": rows}


def versions() -> dict:
    """Versions of the packages the numbers depend on (None where not importable)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("triton", "mamba_ssm", "causal_conv1d"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            try:
                out[name] = getattr(__import__(name), "__version__", "unknown")
            except ImportError:
                out[name] = None
    return out


def write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("generate_gpu.py needs a CUDA device.")
    prov = bench_provenance(__file__, args, argv)
    td, peer = build_models(args.skip_peer)
    runs = contenders(td, peer, args.new_tokens)
    record = {**prov,
              "config": {"d_model": D_MODEL, "n_layer": N_LAYER, "vocab_size": VOCAB, "dtype": "bfloat16",
                         "prompt": args.prompt, "new_tokens": args.new_tokens, "sampling": "greedy",
                         "rounds": args.rounds, "timed": "whole generate call, prompt included, median"},
              "mamba_ssm": ("skipped" if args.skip_peer else peer if isinstance(peer, str) else "ok"),
              "versions": versions(),
              "rows": []}
    for batch in args.batches:
        row = bench_batch(runs, batch, args)
        record["rows"].append(row)
        write_json(Path(args.out), record)    # after every batch: a partial run keeps its data
        shown = {k: v for k, v in row.items() if k not in ("seconds_all", "first_difference_per_row")}
        print(json.dumps(shown), flush=True)
    if not args.skip_kernels:
        try:
            record["kernels"] = bench_kernels(td, args.batches)
        except Exception as exc:
            record["kernels"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print(json.dumps(record["kernels"]), flush=True)
    write_json(Path(args.out), record)
    for row in record["rows"]:
        def fmt(v):
            return f"{v:10.0f}" if isinstance(v, float) else f"{'-':>10}"
        print(f"batch {row['batch']:>3}: tokendyn graph {fmt(row['tokens_per_s'])}  eager "
              f"{fmt(row['tokendyn_eager_tokens_per_s'])}  mamba_ssm cg {fmt(row['mamba_ssm_cg_tokens_per_s'])}  "
              f"eager {fmt(row['mamba_ssm_eager_tokens_per_s'])} tokens/s; ratio {row['ratio_tokens_per_s']}; "
              f"graph == eager: {row['graph_tokens_equal_eager']}")


if __name__ == "__main__":
    main()
