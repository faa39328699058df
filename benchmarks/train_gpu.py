"""Training throughput on one GPU through tokendyn's training loop (tokendyn.train.train):
tokendyn.model.MambaLM on the triton and the chunked scan backends, optionally with an
io_constraint, vs mamba_ssm's MambaLMHeadModel of the same configuration, in one run; and the
regime monitor's cost.

    python benchmarks/train_gpu.py --commit $(git rev-parse HEAD) --out results/train_gpu.json
    python benchmarks/train_gpu.py --io-constraint positive --skip-peer --skip-chunked --out ...

Configuration: d_model 768, 24 layers, vocabulary 50,280, batch 8 x 1,024 tokens, bfloat16
autocast, AdamW (weight decay on matrices only), gradient clipping at 1.0, constant learning
rate; random token ids (one fixed batch, every step). Every contender runs the same loop
(tokendyn.train.train with a task that serves that batch); tokens/s = batch*length / median
step time over the timed steps (after warm-up steps), a step timed between two CUDA
synchronisations; peak memory = torch.cuda.max_memory_allocated over the run (weights, AdamW
moments, activations), also per step (``peak_mem_gib_steps``: with --cuda-graph, whether the peak
is the eager warm-up's, the capture's or the replays'). tokendyn and mamba_ssm alternate for
--rounds rounds (a fresh model each time, the same seed) and each one's median over rounds is
reported; ``tokens_per_s_ratio`` and ``peak_mem_ratio`` are tokendyn (triton) / mamba_ssm.
mamba_ssm runs without causal_conv1d unless it is importable (recorded as
``mamba_ssm_causal_conv1d``).

``saved_for_backward``: for each model, the bytes that one forward (with the loss) keeps alive
for the backward, counted by storage through torch.autograd.graph.saved_tensors_hooks (a view
and its base count once; parameters excluded), with the largest groups by shape and dtype:
where the activation memory of a step lives.

--io-constraint S adds "tokendyn_triton_<S>": the same model with S_Cᵀ S_B constrained to
the sign S, and its throughput relative to the unconstrained model ("throughput_vs_unconstrained").
The regime monitor is timed on the trained unconstrained triton model: the median time of one
monitor call, and its share of training time at the default interval,
t_monitor / (interval * t_step) ("monitor").
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _device_runs as device_runs  # noqa: E402
from _cli import bench_parser, bench_provenance  # noqa: E402 -- after the sys.path setup

from tokendyn.resources import SavedForBackward  # noqa: E402 -- after the sys.path setup
from tokendyn.train import Task, TrainConfig, train  # noqa: E402 -- after the sys.path setup
from tokendyn.train.loop import GRAPH_WARMUP  # noqa: E402 -- after the sys.path setup
from tokendyn.train.monitor import DEFAULT_EVERY, RegimeMonitor  # noqa: E402 -- after the sys.path setup

D_MODEL, N_LAYER, VOCAB, BATCH, LENGTH = 768, 24, 50280, 8, 1024


def build_tokendyn(backend, io_constraint: str = "none"):
    from tokendyn.model import MambaConfig, MambaLM
    extra = {} if io_constraint == "none" else {"io_constraint": io_constraint}
    return MambaLM(MambaConfig(d_model=D_MODEL, n_layer=N_LAYER, vocab_size=VOCAB, scan_backend=backend, **extra))


def build_mamba_ssm():
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    cfg = MambaConfig(d_model=D_MODEL, n_layer=N_LAYER, vocab_size=VOCAB, ssm_cfg={"layer": "Mamba1"},
                      rms_norm=True, residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=8,
                      tie_embeddings=True)
    return MambaLMHeadModel(cfg)


def logits_of(model, ids):
    from tokendyn.model import MambaLM

    # tokendyn's training loop passes its own token ids unchecked (no device sync), as here
    out = model(ids, check_ids=False) if isinstance(model, MambaLM) else model(ids)
    return out.logits if hasattr(out, "logits") else out


def bench_loss(model, x, y, autocast: bool = True):
    """Mean next-token cross-entropy under bf16 autocast (the loss in float32)."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        logits = logits_of(model, x)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


class FixedBatchTask(Task):
    """One fixed batch of random token ids at every step (throughput only)."""

    name = "lm-random-ids"
    metric = "loss"
    examples_per_step = BATCH
    tokens_per_example = LENGTH

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, VOCAB, (BATCH, LENGTH + 1), generator=g)
        self.x, self.y = ids[:, :-1], ids[:, 1:]

    def train_batch(self, step, index, count):
        n = BATCH // count
        return self.x[index * n:(index + 1) * n], self.y[index * n:(index + 1) * n]

    def loss(self, model, batch):
        return bench_loss(model, *batch, autocast=self.autocast)

    @torch.no_grad()
    def evaluate(self, model, split):
        return {"loss": float(self.loss(model, (self.x.cuda(), self.y.cuda())))}

    def probe_input(self):
        return self.x[:1]


class StepTimer:
    """Callback at every step: synchronise and record the wall time (seconds) between steps, and
    each step's peak of allocated memory (GiB; the first step's includes building the optimiser),
    so that a graphed run shows whether its peak is the capture's or the replays'."""

    every = 1

    def __init__(self):
        self.marks = []
        self.peaks = []

    def __call__(self, step, model, record):
        torch.cuda.synchronize()
        self.marks.append(time.perf_counter())
        self.peaks.append(torch.cuda.max_memory_allocated() / 2**30)
        torch.cuda.reset_peak_memory_stats()

    def step_ms(self):
        return [1e3 * (b - a) for a, b in zip(self.marks, self.marks[1:])]


def measure(model, steps, warmup, cuda_graph: bool = False):
    task = FixedBatchTask()
    timer = StepTimer()
    torch.cuda.reset_peak_memory_stats()
    if cuda_graph:              # three eager warm-up steps, then the step that captures the graphs
        warmup = max(warmup, GRAPH_WARMUP + 2)
    cfg = TrainConfig(steps=warmup + steps, lr=3e-4, warmup=0.0, min_lr_ratio=1.0, weight_decay=0.1,
                      grad_clip=1.0, eval_every=0, checkpoint_every=0, log_every=1, cuda_graph=cuda_graph)
    res = train(model, task, cfg, device="cuda", callbacks=[timer], progress=False)
    times = timer.step_ms()[warmup:]
    ms = statistics.median(times)
    return {"params_millions": sum(p.numel() for p in model.parameters()) / 1e6,
            "step_ms_median": ms, "step_ms_all": times, "tokens_per_s": BATCH * LENGTH / (ms / 1e3),
            "peak_mem_gib": max([*timer.peaks, torch.cuda.max_memory_allocated() / 2**30]),
            "peak_mem_gib_steps": [round(p, 4) for p in timer.peaks],
            "loss_last": res.final_loss}, task


def saved_for_backward(model) -> dict:
    """Bytes one forward + loss keeps for the backward (by storage, parameters excluded), and the
    largest groups by (shape, dtype)."""
    model = model.cuda().train()
    task = FixedBatchTask()
    with SavedForBackward(model.parameters()) as saved:
        loss = bench_loss(model, task.x.cuda(), task.y.cuda())
    del loss
    groups = {}
    for nbytes, key in saved.storages.values():
        n, b = groups.get(key, (0, 0))
        groups[key] = (n + 1, b + nbytes)
    top = sorted(groups.items(), key=lambda kv: -kv[1][1])[:12]
    return {"gib": saved.nbytes / 2**30,
            "largest": [{"tensor": k, "count": n, "gib": b / 2**30} for k, (n, b) in top]}


def monitor_cost(model, task, step_ms, repeats=5):
    monitor = RegimeMonitor(task.probe_input(), every=DEFAULT_EVERY)
    records = []
    monitor(0, model, records.append)            # warm-up (first forward with internals)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        monitor(0, model, records.append)
        torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - t))
    ms = statistics.median(times)
    return {"interval_steps": DEFAULT_EVERY, "call_ms_median": ms, "call_ms_all": times,
            "share_of_training_at_interval": ms / (DEFAULT_EVERY * step_ms),
            "probe_tokens": int(task.probe_input().numel())}


def graph_ratios(results: dict) -> dict:
    """With --cuda-graph: the graphed model's tokens/s and peak memory against mamba_ssm's."""
    g, ref = results.get("tokendyn_triton_graph", {}), results.get("mamba_ssm", {})
    if "tokens_per_s" not in g or "tokens_per_s" not in ref:
        return {}
    return {"graph_tokens_per_s_ratio": g["tokens_per_s"] / ref["tokens_per_s"],
            "graph_peak_mem_ratio": g["peak_mem_gib"] / ref["peak_mem_gib"]}


def main():
    ap = bench_parser("results/train_gpu.json")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--launch", default=None, help="JSON of triton launch-shape overrides")
    ap.add_argument("--io-constraint", default=None, choices=["positive", "negative", "mixed"],
                    help="also time the triton model with this constraint on S_Cᵀ S_B")
    ap.add_argument("--skip-peer", action="store_true", help="leave out mamba_ssm")
    ap.add_argument("--skip-chunked", action="store_true", help="leave out the chunked backend")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of tokendyn and mamba_ssm")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="add tokendyn_triton_graph: the same model trained with --cuda-graph")
    ap.add_argument("--torch-norm", action="store_true",
                    help="add tokendyn_triton_torchnorm: eager, with PyTorch's add, RMSNorm and cast in place of the "
                         "Triton norm kernels (their host cost against their kernel time)")
    ap.add_argument("--conv-cols", action="store_true",
                    help="add tokendyn_triton_convcols: eager, with the conv kernels that read x and the gradient "
                         "only at multiples of 8 steps (causal_conv.LAUNCH fwd/bwd 'cols'); with --cuda-graph "
                         "also tokendyn_triton_graph_convcols, graphed (the kernels' time without the host's)")
    args = ap.parse_args()
    prov = bench_provenance(__file__, args)
    try:
        import causal_conv1d  # noqa: F401 -- only checks that causal_conv1d is installed
        has_cc = True
    except ImportError:
        has_cc = False
    results = {}
    builders = {"tokendyn_triton": lambda: build_tokendyn("triton")}
    if args.cuda_graph:
        builders["tokendyn_triton_graph"] = lambda: build_tokendyn("triton")
    if args.torch_norm:
        builders["tokendyn_triton_torchnorm"] = lambda: build_tokendyn("triton")
    if args.conv_cols:
        builders["tokendyn_triton_convcols"] = lambda: build_tokendyn("triton")
    if args.conv_cols and args.cuda_graph:
        builders["tokendyn_triton_graph_convcols"] = lambda: build_tokendyn("triton")
    if args.io_constraint:
        builders[f"tokendyn_triton_{args.io_constraint}"] = lambda: build_tokendyn("triton", args.io_constraint)
    if not args.skip_peer:
        builders["mamba_ssm"] = build_mamba_ssm
    # tokendyn and the peer alternate, round after round; the slow chunked backend runs once
    runs = [(name, build, args.steps) for _ in range(args.rounds) for name, build in builders.items()]
    if not args.skip_chunked:
        runs.append(("tokendyn_chunked", lambda: build_tokendyn("chunked"), max(3, args.steps // 3)))
    from tokendyn.ops import causal_conv, norm_linear, triton_scan
    launch = json.loads(args.launch) if args.launch else {}
    conv_default = {k: causal_conv.LAUNCH[k] for k in ("fwd", "bwd")}
    per_round = {}
    for name, build, steps in runs:
        torch.manual_seed(0)
        model = None
        norm_linear.LAUNCH["fused"] = name != "tokendyn_triton_torchnorm"
        if name.endswith("_convcols"):
            causal_conv.LAUNCH.update(fwd="cols", bwd="cols")
        try:
            model = build()
            with triton_scan.scan_config(**launch):
                r, task = measure(model, steps, args.warmup if name != "tokendyn_chunked" else 1,
                                  cuda_graph=name.startswith("tokendyn_triton_graph"))
                if name == "tokendyn_triton" and name not in per_round:
                    r["monitor"] = monitor_cost(model, task, r["step_ms_median"])
        except Exception as exc:  # record why a contender could not run, keep the others
            r = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        norm_linear.LAUNCH["fused"] = True
        causal_conv.LAUNCH.update(conv_default)
        per_round.setdefault(name, []).append(r)
        print(name, json.dumps({k: v for k, v in r.items() if k != "step_ms_all"}), flush=True)
        model = None
        torch.cuda.empty_cache()
    for name, rs in per_round.items():
        ok = [r for r in rs if "tokens_per_s" in r]
        if not ok:
            results[name] = rs[0]
            continue
        # the round with the median throughput stands for the contender; all rounds are kept
        ok.sort(key=lambda r: r["tokens_per_s"])
        results[name] = {**ok[len(ok) // 2], "rounds_tokens_per_s": [r["tokens_per_s"] for r in ok],
                         "rounds_peak_mem_gib": [r["peak_mem_gib"] for r in ok]}
        results[name]["peak_mem_gib"] = max(results[name]["rounds_peak_mem_gib"])
        if "monitor" not in results[name] and any("monitor" in r for r in rs):
            results[name]["monitor"] = next(r["monitor"] for r in rs if "monitor" in r)
    saved = {}
    for name in [n for n in ("tokendyn_triton", "mamba_ssm") if n in builders]:
        torch.manual_seed(0)
        try:
            saved[name] = saved_for_backward(builders[name]())
        except Exception as exc:
            saved[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print("saved_for_backward", name, json.dumps(saved[name]), flush=True)
        torch.cuda.empty_cache()
    ref = results.get("mamba_ssm", {}).get("tokens_per_s")
    base = results.get("tokendyn_triton", {}).get("tokens_per_s")
    for name, r in results.items():
        if ref and "tokens_per_s" in r:
            r["throughput_vs_mamba_ssm"] = r["tokens_per_s"] / ref
        if base and "tokens_per_s" in r and name.startswith("tokendyn_triton_") and name != "tokendyn_triton_graph":
            r["throughput_vs_unconstrained"] = r["tokens_per_s"] / base
    out = {**prov, "config": {"d_model": D_MODEL, "n_layer": N_LAYER, "vocab_size": VOCAB, "batch": BATCH,
                              "length": LENGTH, "autocast": "bfloat16", "optimizer": "AdamW",
                              "grad_clip": 1.0, "loop": "tokendyn.train.train"},
           "mamba_ssm_causal_conv1d": has_cc, "triton_launch_shape": launch or "defaults",
           "tokens_per_s_ratio": base / ref if base and ref else None,
           "peak_mem_ratio": (results["tokendyn_triton"]["peak_mem_gib"] / results["mamba_ssm"]["peak_mem_gib"]
                              if base and ref else None),
           **graph_ratios(results),
           "rounds": args.rounds, "saved_for_backward": saved, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(device_runs.merge(device_runs.load(Path(args.out)), out,
                                                           device_runs.train_rows), indent=2))
    print(f"tokens/s ratio {out['tokens_per_s_ratio']}, peak memory ratio {out['peak_mem_ratio']}")
    for name, r in results.items():
        if "tokens_per_s" in r:
            print(f"{name:>26}: {r['step_ms_median']:8.1f} ms/step {r['tokens_per_s']:10.0f} tokens/s "
                  f"x{r.get('throughput_vs_mamba_ssm', float('nan')):.2f} vs mamba_ssm "
                  f"x{r.get('throughput_vs_unconstrained', float('nan')):.3f} vs unconstrained "
                  f"peak {r['peak_mem_gib']:.1f} GiB")
            if "monitor" in r:
                m = r["monitor"]
                print(f"{'':>26}  monitor: {m['call_ms_median']:.1f} ms per call = "
                      f"{100 * m['share_of_training_at_interval']:.2f}% of training every {m['interval_steps']} steps")
        else:
            print(f"{name:>26}: {r['error']}")


# ---- used by benchmarks/profile_train_gpu.py (profiles one bare step) -----------------------

def setup(model):
    """The model on the GPU in training mode, its AdamW, and one fixed batch (x, y)."""
    model = model.cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    task = FixedBatchTask()
    return model, opt, task.x.cuda(), task.y.cuda()


def train_step(model, opt, x, y):
    """One optimiser step with the benchmark task's loss; returns the loss (a CUDA scalar)."""
    loss = bench_loss(model, x, y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


if __name__ == "__main__":
    main()
