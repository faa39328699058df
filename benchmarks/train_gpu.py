"""Training throughput on one GPU: tokendyn.model.MambaLM on the triton and the chunked scan
backends vs mamba_ssm's MambaLMHeadModel of the same configuration, in one run.

    python benchmarks/train_gpu.py --commit $(git rev-parse HEAD) --out results/train_gpu.json

Configuration: d_model 768, 24 layers, vocabulary 50,280, batch 8 x 1,024 tokens, bfloat16
autocast, AdamW; random token ids; tokens/s = batch*length / median step time over the
timed steps (after warm-up steps). mamba_ssm runs without causal_conv1d (not built), so its
Mamba layers take the PyTorch conv1d path plus its CUDA selective scan; its fused
(Triton) add+RMSNorm is on, as by default.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokendyn.provenance import provenance  # noqa: E402

D_MODEL, N_LAYER, VOCAB, BATCH, LENGTH = 768, 24, 50280, 8, 1024


def build_tokendyn(backend):
    from tokendyn.model import MambaConfig, MambaLM
    return MambaLM(MambaConfig(d_model=D_MODEL, n_layer=N_LAYER, vocab_size=VOCAB, scan_backend=backend))


def build_mamba_ssm():
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    cfg = MambaConfig(d_model=D_MODEL, n_layer=N_LAYER, vocab_size=VOCAB, ssm_cfg={"layer": "Mamba1"},
                      rms_norm=True, residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=8,
                      tie_embeddings=True)
    return MambaLMHeadModel(cfg)


def logits_of(model, ids):
    out = model(ids)
    return out.logits if hasattr(out, "logits") else out


def setup(model):
    """The model on the GPU in training mode, its AdamW, and one fixed batch (x, y)."""
    model = model.cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, VOCAB, (BATCH, LENGTH + 1), device="cuda", generator=g)
    return model, opt, ids[:, :-1], ids[:, 1:]


def train_step(model, opt, x, y):
    """One optimiser step; returns the loss (a CUDA scalar)."""
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = logits_of(model, x)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def measure(model, steps, warmup):
    model, opt, x, y = setup(model)
    times, losses = [], []
    torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        loss = train_step(model, opt, x, y)
        end.record()
        torch.cuda.synchronize()
        losses.append(loss.item())
        if i >= warmup:
            times.append(start.elapsed_time(end))
    ms = statistics.median(times)
    return {"params_millions": sum(p.numel() for p in model.parameters()) / 1e6,
            "step_ms_median": ms, "step_ms_all": times, "tokens_per_s": BATCH * LENGTH / (ms / 1e3),
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
            "loss_first": losses[0], "loss_last": losses[-1]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/train_gpu.json")
    ap.add_argument("--commit", default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--launch", default=None, help="JSON of triton launch-shape overrides")
    args = ap.parse_args()
    prov = provenance(" ".join(["python"] + sys.argv))
    if args.commit:
        prov["commit"] = args.commit
    try:
        import causal_conv1d  # noqa: F401
        has_cc = True
    except ImportError:
        has_cc = False
    results = {}
    runs = [("tokendyn_triton", lambda: build_tokendyn("triton"), args.steps),
            ("mamba_ssm", build_mamba_ssm, args.steps),
            ("tokendyn_chunked", lambda: build_tokendyn("chunked"), max(3, args.steps // 3))]
    from tokendyn.ops import triton_scan
    launch = json.loads(args.launch) if args.launch else {}
    for name, build, steps in runs:
        torch.manual_seed(0)
        try:
            model = build()
            with triton_scan.scan_config(**launch):
                results[name] = measure(model, steps, args.warmup if name != "tokendyn_chunked" else 1)
        except Exception as exc:  # record why a contender could not run, keep the others
            results[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "step_ms_all"}), flush=True)
        model = None
        torch.cuda.empty_cache()
    ref = results.get("mamba_ssm", {}).get("tokens_per_s")
    for name, r in results.items():
        if ref and "tokens_per_s" in r:
            r["throughput_vs_mamba_ssm"] = r["tokens_per_s"] / ref
    out = {**prov, "config": {"d_model": D_MODEL, "n_layer": N_LAYER, "vocab_size": VOCAB, "batch": BATCH,
                              "length": LENGTH, "autocast": "bfloat16", "optimizer": "AdamW"},
           "mamba_ssm_causal_conv1d": has_cc, "triton_launch_shape": launch or "defaults", "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    for name, r in results.items():
        if "tokens_per_s" in r:
            print(f"{name:>18}: {r['step_ms_median']:8.1f} ms/step {r['tokens_per_s']:10.0f} tokens/s "
                  f"x{r.get('throughput_vs_mamba_ssm', float('nan')):.2f} peak {r['peak_mem_gib']:.1f} GiB")
        else:
            print(f"{name:>18}: {r['error']}")


if __name__ == "__main__":
    main()
