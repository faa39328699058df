"""Cost of the io-matrix sign constraint (THEORY.md section 5) against the unconstrained model.

    python benchmarks/io_constraint.py                  # CPU, writes results/io_constraint_cpu.json
    python benchmarks/io_constraint.py --out /tmp/x.json --repeats 5
    python benchmarks/io_constraint.py --device cuda --d-model 768 --n-layer 24 --vocab 50277 \
        --batch 8 --length 1024 --out OUT/io_constraint_gpu.json      # the GPU training benchmark's shape

One training step (forward, backward, AdamW step; cross-entropy on random ids) of a MambaLM
for io_constraint none / positive / negative / mixed, same seed and configuration: on the CPU
float32 with the chunked scan, on CUDA bf16 autocast with the default (triton) scan. The
settings are timed in turn within each repeat (so a slow spell of the shared machine hits all
of them), the median per setting is reported with its ratio to "none", and the ratio of the
minima (the least disturbed run of each). Also timed: forward and backward of every layer's
effective x_proj weight alone, the only work the constraint adds (U from its free entries, λ,
the concatenation, and their gradients): the products with the tokens have the same shapes in
every setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokendyn.model import MambaConfig, MambaLM  # noqa: E402 -- after the sys.path setup
from tokendyn.provenance import provenance  # noqa: E402 -- after the sys.path setup

SETTINGS = ("none", "positive", "negative", "mixed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "io_constraint_cpu.json")
    args = ap.parse_args()

    cuda = args.device == "cuda"
    base = MambaConfig(d_model=args.d_model, n_layer=args.n_layer, vocab_size=args.vocab, d_state=args.d_state,
                       scan_backend="auto" if cuda else "chunked")
    models, opts = {}, {}
    for s in SETTINGS:
        torch.manual_seed(0)
        models[s] = MambaLM(dataclasses.replace(base, io_constraint=s)).to(args.device)
        opts[s] = torch.optim.AdamW(models[s].parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.batch, args.length + 1), generator=g).to(args.device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step(s):
        model = models[s]
        model.zero_grad(set_to_none=True)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=cuda):
            logits = model(ids[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        opts[s].step()

    def weights(model):
        # forward and backward of the effective weights alone: the constraint's added work
        # (the products with x have the same shapes in every setting)
        total = sum((layer.mixer.effective_x_proj_weight() * 1e-3).sum() for layer in model.backbone.layers)
        total.backward()

    times = {s: [] for s in SETTINGS}
    weight_times = {s: [] for s in SETTINGS}
    for s in SETTINGS:  # warm-up (and Triton's compilation)
        for _ in range(3 if cuda else 1):
            step(s)
    for _ in range(args.repeats):
        for s in SETTINGS:
            sync()
            t0 = time.perf_counter()
            step(s)
            sync()
            times[s].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in range(10):
                weights(models[s])
            sync()
            weight_times[s].append((time.perf_counter() - t0) / 10)

    med = {s: statistics.median(v) for s, v in times.items()}
    result = {
        "what": "one training step (forward, backward, AdamW), median of repeats (settings interleaved)",
        "config": {"d_model": args.d_model, "n_layer": args.n_layer, "d_state": args.d_state, "vocab": args.vocab,
                   "d_inner": base.d_inner, "batch": args.batch, "length": args.length,
                   "dtype": "bfloat16 autocast" if cuda else "float32", "scan_backend": base.scan_backend,
                   "repeats": args.repeats, "device": args.device},
        "step_ms": {s: round(1e3 * med[s], 2) for s in SETTINGS},
        "step_ms_all": {s: [round(1e3 * t, 2) for t in v] for s, v in times.items()},
        "ratio_to_none": {s: round(med[s] / med["none"], 3) for s in SETTINGS},
        "step_ms_min": {s: round(1e3 * min(v), 2) for s, v in times.items()},
        "ratio_of_minima_to_none": {s: round(min(times[s]) / min(times["none"]), 3) for s in SETTINGS},
        "effective_weights_fwd_bwd_ms_all_layers": {s: round(1e3 * statistics.median(v), 4)
                                                    for s, v in weight_times.items()},
        "threads": torch.get_num_threads(),
        "provenance": provenance(" ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)
    print(json.dumps({k: result[k] for k in ("step_ms", "ratio_to_none", "ratio_of_minima_to_none",
                                            "effective_weights_fwd_bwd_ms_all_layers")},
                     indent=1))


if __name__ == "__main__":
    main()
