"""The Mamba-2 item of section "core": a small Mamba-2 (SSD) language model through both SSD scan
backends in float32, against the reference scan in float64, and greedy generation through its
recurrent state against argmax over full forwards. Cheap: under a second on a CPU at quick scale."""

from __future__ import annotations

import time

import torch

from ..model import MambaConfig, MambaLM, generate
from ..report import Check
from .verdicts import LOGIT_RTOL

SETTINGS = {
    "quick": {"d_model": 32, "n_layer": 2, "vocab_size": 256, "head_dim": 16, "d_state": 8, "n_groups": 2,
              "chunk_size": 16, "batch": 2, "length": 48, "prompt": 6, "new_tokens": 6},
    "full": {"d_model": 256, "n_layer": 4, "vocab_size": 256, "head_dim": 64, "d_state": 64, "n_groups": 2,
             "chunk_size": 64, "batch": 4, "length": 500, "prompt": 16, "new_tokens": 32},
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def run_mamba2(quick: bool, device: torch.device) -> tuple[dict, list[Check]]:
    """The item's record (what core.json holds under ``mamba2``) and its checks."""
    s = SETTINGS["quick" if quick else "full"]
    torch.manual_seed(0)
    config = MambaConfig(d_model=s["d_model"], n_layer=s["n_layer"], vocab_size=s["vocab_size"], layer="mamba2",
                         head_dim=s["head_dim"], d_state=s["d_state"], n_groups=s["n_groups"],
                         chunk_size=s["chunk_size"], scan_backend="reference")
    model = MambaLM(config).to(device).eval()
    ids = torch.randint(0, s["vocab_size"], (s["batch"], s["length"]),
                        generator=torch.Generator().manual_seed(1)).to(device)
    backends = {}
    with torch.no_grad():
        oracle = MambaLM(config).to(device).eval()
        oracle.load_state_dict(model.state_dict())
        ref64 = oracle.double()(ids)
        del oracle
        for name in ("reference", "chunked"):
            model.set_scan_backend(name)
            t0 = time.perf_counter()
            logits = model(ids)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            backends[name] = {"max_rel_diff_vs_float64": _rel(logits, ref64),
                              "forward_ms": (time.perf_counter() - t0) * 1e3}
    prompt = ids[:1, :s["prompt"]]
    out = generate(model, prompt, s["new_tokens"])
    with torch.no_grad():
        full = model(out[:, :-1])[:, s["prompt"] - 1:, :config.vocab_size].argmax(-1)
    matches = bool(torch.equal(full, out[:, s["prompt"]:]))
    record = {"model": {**config.flat_dict(), "parameters": model.num_parameters()},
              "input": {"batch": s["batch"], "length": s["length"], "dtype": "float32"},
              "backends": backends, "generation_matches_full_forward": matches}
    worst = max(backends, key=lambda n: backends[n]["max_rel_diff_vs_float64"])
    d64 = backends[worst]["max_rel_diff_vs_float64"]
    checks = [
        Check.judged("Both SSD scans of a Mamba-2 model in float32 agree with the reference scan run in float64.",
                     f"largest logit difference ≤ {LOGIT_RTOL:g} × largest |logit|", f"worst {worst}: {d64:.2e}",
                     d64 <= LOGIT_RTOL),
        Check.judged("Mamba-2 generation through the recurrent state gives the tokens of argmax over full forwards.",
                     "identical token ids", "identical" if matches else "different", matches),
    ]
    return record, checks


def markdown(record: dict) -> list[str]:
    """The item's lines of the section's text."""
    m, b = record["model"], record["backends"]
    return [
        "",
        f"A Mamba-2 (SSD) LM beside it (d_model {m['d_model']}, {m['n_layer']} layers, head_dim {m['head_dim']}, "
        f"d_state {m['d_state']}, n_groups {m['n_groups']}, {m['parameters']:,} parameters) on "
        f"{record['input']['batch']} × {record['input']['length']} random tokens in float32: "
        + ", ".join(f"{n} scan {r['max_rel_diff_vs_float64']:.2e} from float64 ({r['forward_ms']:.0f} ms)"
                    for n, r in b.items())
        + "; generation through the recurrent state identical to argmax over full forwards: "
        + ("yes." if record["generation_matches_full_forward"] else "**no**."),
    ]
