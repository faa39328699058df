"""Section "core": a small Mamba language model run through every scan backend.

Writes ``core.json`` into the output directory: per backend the logits' difference
to the reference backend and to a float64 reference run, and the median forward
time; plus a short greedy generation through the recurrent cache, checked against
argmax over full forwards.
"""

from __future__ import annotations

import json
import statistics
import time

import torch

from ..model import MambaConfig, MambaLM, generate
from ..ops import available_backends
from ..provenance import provenance
from .core_mamba2 import markdown as mamba2_markdown
from .core_mamba2 import run_mamba2
from .section import Context, SectionResult
from .verdicts import core_checks

TITLE = "Mamba model and scan backends"

SETTINGS = {
    "quick": {"d_model": 128, "n_layer": 4, "vocab_size": 256, "batch": 2, "length": 256, "repeats": 3,
              "prompt": 8, "new_tokens": 16},
    "full": {"d_model": 256, "n_layer": 8, "vocab_size": 256, "batch": 4, "length": 1024, "repeats": 5,
             "prompt": 16, "new_tokens": 64},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int):
    """(result of the last call, list of wall times in ms); one untimed warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return out, times


def _rel(diff: torch.Tensor, ref: torch.Tensor) -> float:
    return (diff.abs().max() / ref.abs().max()).item()


def run(ctx: Context) -> SectionResult:
    s = SETTINGS["quick" if ctx.quick else "full"]
    device = ctx.device
    torch.manual_seed(0)
    config = MambaConfig(d_model=s["d_model"], n_layer=s["n_layer"], vocab_size=s["vocab_size"],
                         scan_backend="reference")
    model = MambaLM(config).to(device).eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, s["vocab_size"], (s["batch"], s["length"]), generator=gen).to(device)

    results = _compare_backends(model, config, ids, device, s["repeats"])
    generation = _generation(model, ids, s, device, results, config.vocab_size)
    consistent = generation["matches_full_forward_argmax"]

    # a small Mamba-2 model beside it: both SSD scans against float64, generation through its state
    mamba2, mamba2_checks = run_mamba2(ctx.quick, device)

    record = {
        "provenance": provenance(ctx.command),
        "model": {**config.flat_dict(), "parameters": model.num_parameters()},
        "input": {"batch": s["batch"], "length": s["length"], "dtype": "float32", "device": str(device),
                  "torch_threads": torch.get_num_threads()},
        "repeats": s["repeats"],
        "backends": results,
        "generation": generation,
        "mamba2": mamba2,
    }
    (ctx.out / "core.json").write_text(json.dumps(record, indent=2))

    summary = {
        "backends": {n: {"max_rel_diff_vs_reference": r["max_rel_diff_vs_reference"],
                         "max_rel_diff_vs_float64": r["max_rel_diff_vs_float64"],
                         "forward_ms_median": r["forward_ms_median"]} for n, r in results.items()},
        "generation_tokens_per_second": generation["tokens_per_second"],
        "generation_matches_full_forward": consistent,
        "mamba2": {n: r["max_rel_diff_vs_float64"] for n, r in mamba2["backends"].items()},
        "json": "core.json",
    }
    return SectionResult(markdown=_markdown(config, model, s, device, results, generation, mamba2),
                         summary=summary,
                         checks=core_checks(results, consistent, str(device)) + mamba2_checks)


def _compare_backends(model, config, ids, device, repeats: int) -> dict:
    """Each available scan backend's logits on ``ids`` against the reference backend in float32
    and in float64, and its forward time: {backend: numbers} (core.json's "backends")."""
    with torch.no_grad():
        oracle = MambaLM(config).to(device).eval()
        oracle.load_state_dict(model.state_dict())
        oracle = oracle.double()
        ref64 = oracle(ids)
        del oracle

        backends = available_backends(device)
        rows = {}
        ref32 = None
        for name in backends:
            model.set_scan_backend(name)
            logits, times = _timed(lambda: model(ids), device, repeats)
            if name == "reference":
                ref32 = logits
            rows[name] = {"logits": logits, "times_ms": times}

    results = {}
    for name, row in rows.items():
        d32 = (row["logits"] - ref32).float()
        d64 = row["logits"].double() - ref64
        results[name] = {
            "max_abs_diff_vs_reference": d32.abs().max().item(),
            "max_rel_diff_vs_reference": _rel(d32, ref32.float()),
            "max_abs_diff_vs_float64": d64.abs().max().item(),
            "max_rel_diff_vs_float64": _rel(d64, ref64),
            "forward_ms_median": statistics.median(row["times_ms"]),
            "forward_ms_all": [round(t, 3) for t in row["times_ms"]],
        }
    ref_ms = results["reference"]["forward_ms_median"]
    for r in results.values():
        r["speedup_vs_reference"] = ref_ms / r["forward_ms_median"]
    return results


def _generation(model, ids, s: dict, device, results: dict, vocab_size: int) -> dict:
    """Greedy generation through the recurrent cache, with the fastest backend for the prefill,
    timed after one warm-up call and compared with argmax over full forwards (core.json's
    "generation"). Leaves the model on that backend."""
    fastest = min(results, key=lambda n: results[n]["forward_ms_median"])
    model.set_scan_backend(fastest)
    prompt = ids[:1, :s["prompt"]]
    generate(model, prompt, 2)  # warm-up: first-use costs (kernel compilation for this shape) stay out of the timing
    _sync(device)
    t0 = time.perf_counter()
    out = generate(model, prompt, s["new_tokens"])
    _sync(device)
    gen_s = time.perf_counter() - t0
    with torch.no_grad():  # the same tokens must come out of full forwards
        full = model(out[:, :-1])[:, s["prompt"] - 1:, :vocab_size].argmax(-1)
    consistent = bool(torch.equal(full, out[:, s["prompt"]:]))
    return {
        "backend": fastest,
        "prompt_tokens": s["prompt"],
        "new_tokens": s["new_tokens"],
        "seconds": gen_s,  # prompt prefill + new_tokens recurrent steps, after one warm-up call
        "tokens_per_second": s["new_tokens"] / gen_s,
        "matches_full_forward_argmax": consistent,
        "prompt": prompt[0].tolist(),
        "generated": out[0, s["prompt"]:].tolist(),
    }


def _markdown(config, model, s: dict, device, results: dict, generation: dict, mamba2: dict) -> str:
    """The section's text: the backends' table, the generation line and the Mamba-2 part."""
    lines = [
        f"A Mamba LM (d_model {config.d_model}, {config.n_layer} layers, vocabulary {config.vocab_size}, "
        f"{model.num_parameters():,} parameters, random init) on a batch of {s['batch']} × {s['length']} "
        f"random tokens in float32 on `{device}`, once per scan backend. Differences are the largest "
        "logit difference, relative to the largest |logit|; the float64 column compares with the "
        "reference backend run in float64.",
        "",
        "| backend | rel. diff vs reference | rel. diff vs float64 | forward (ms, median) | speed-up vs reference |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['max_rel_diff_vs_reference']:.2e} | {r['max_rel_diff_vs_float64']:.2e} | "
                     f"{r['forward_ms_median']:.1f} | {r['speedup_vs_reference']:.1f}× |")
    lines += [
        "",
        f"Greedy generation ({generation['backend']} prefill, then recurrent steps): {s['new_tokens']} tokens "
        f"after a {s['prompt']}-token prompt in {generation['seconds']:.2f} s "
        f"({generation['tokens_per_second']:.1f} tokens/s); "
        f"identical to argmax over full forwards: {'yes' if generation['matches_full_forward_argmax'] else '**no**'}.",
        *mamba2_markdown(mamba2),
        "",
        "Data: `core.json`.",
    ]
    return "\n".join(lines)
