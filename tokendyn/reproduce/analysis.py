"""Section "analysis": the checkpoint analysis of ``tokendyn analyze`` on a small model.

A small byte-level MambaLM (random initialisation, mamba_ssm's init) is analysed
beside two models of the same configuration and seed built with the sign constraint of
THEORY.md section 5 (``io_constraint="positive"``: M = S_Cᵀ S_B positive on its
N-dimensional range; ``"negative"``). The spectrum predicts the regime of each layer (THEORY.md section 4);
one forward pass on held-out Bible verses measures what the tokens do. Training
is left out: a few CPU training steps cost minutes here, which the quick scale
cannot spend. The unconstrained model's report (HTML, PNGs, JSON) goes to ``OUT/analysis/``.
"""

from __future__ import annotations

import dataclasses
import json

import torch

from ..analysis.analyze import InputTokens, analyze_model, write_analysis
from ..data.text import bible_verses, byte_tokens
from ..model import MambaConfig, MambaLM
from ..provenance import provenance
from . import Context, SectionResult
from .verdicts import analysis_checks

TITLE = "Checkpoint analysis"

SETTINGS = {
    "quick": {"d_model": 64, "n_layer": 4, "tokens": 512},
    "full": {"d_model": 256, "n_layer": 12, "tokens": 1024},
}
VARIANTS = ("init", "positive", "negative")


def held_out_bytes(n: int) -> torch.Tensor:
    """The first n bytes of the last 10% of the verses (byte tokens), (n,) int64."""
    verses = bible_verses()
    return byte_tokens("\n".join(verses[int(0.9 * len(verses)):]))[:n]


def _model(config: MambaConfig, device) -> MambaLM:
    # the same seed for every setting: the constrained models share the unconstrained one's
    # other weights and take U's free entries from its C rows (tokendyn.model.io_constraint)
    torch.manual_seed(0)
    return MambaLM(config).to(device).eval()


def _table(results: dict) -> str:
    head = "| layer | " + " | ".join(f"M_s +/−/0 ({v}) | regime ({v}) | growth ({v})" for v in VARIANTS) + " |"
    rows = [head, "|" + "---|" * (1 + 3 * len(VARIANTS))]
    for i in range(len(results["init"]["layers"])):
        cells = [str(i)]
        for v in VARIANTS:
            r = results[v]["layers"][i]
            cells += [f"{r['io_eigs_positive']}/{r['io_eigs_negative']}/{r['io_eigs_zero']}",
                      r["predicted_regime"], f"{r['norm_growth']:.3f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _brief(data: dict) -> dict:
    keys = ("index", "io_eigs_positive", "io_eigs_negative", "io_eigs_zero", "predicted_regime", "verdict",
            "norm_growth")
    return {"summary": data["summary"], "position_spearman": data["growth_by_position"]["spearman"],
            "layers": [{k: r[k] for k in keys} for r in data["layers"]]}


def run(ctx: Context) -> SectionResult:
    s = SETTINGS["quick" if ctx.quick else "full"]
    out = ctx.out / "analysis"
    config = MambaConfig(d_model=s["d_model"], n_layer=s["n_layer"], vocab_size=256)
    inputs = InputTokens(held_out_bytes(s["tokens"]), "builtin-corpus", "bytes", False,
                         f"the first {s['tokens']} bytes of the held-out last 10% of the King James Bible verses "
                         "(byte tokens)")
    models = {"init": _model(config, ctx.device),
              **{v: _model(dataclasses.replace(config, io_constraint=v), ctx.device) for v in ("positive", "negative")}}
    results, paths = {}, None
    for name, model in models.items():
        analysis = analyze_model(model, inputs, layout="in memory", checkpoint=f"random initialisation ({name})")
        if name == "init":
            paths = write_analysis(analysis, out, provenance=provenance(ctx.command))
            results[name] = json.loads(paths["json"].read_text())
        else:
            results[name] = analysis.to_json()
            (out / f"{name}.json").write_text(json.dumps(results[name], indent=1))

    summary = {
        "model": {"d_model": s["d_model"], "n_layer": s["n_layer"], "vocab": "bytes (256)", "d_state": 16},
        "tokens": s["tokens"],
        **{v: _brief(results[v]) for v in VARIANTS},
        "files": {k: str(p.relative_to(ctx.out)) for k, p in paths.items()},
    }
    rel = {k: p.relative_to(ctx.out) for k, p in paths.items()}
    total = {v: results[v]["summary"]["total_growth"] for v in VARIANTS}
    md = f"""A byte-level MambaLM (d_model {s['d_model']}, {s['n_layer']} layers, d_state 16, random
initialisation) and the same model built with the sign constraint of THEORY.md section 5
(S_C = U, S_B = diag(λ) U, so M = Uᵀ diag(λ) U): "positive" (`io_constraint="positive"`, every λ_i > 0:
M positive on its 16-dimensional range) and "negative" (every λ_i < 0). Input for the measured
dynamics: {inputs.description}.

{_table(results)}

"M_s +/−/0" counts the positive, negative and zero eigenvalues of the symmetric part of M = S_Cᵀ S_B
(from the 2N×2N problem); "regime" is the idealised prediction from that signature; "growth" is the
measured norm growth factor of the residual stream through the layer (geometric mean over tokens).
Total growth from the embedding to the last layer: init {total['init']:.3f}, positive {total['positive']:.3f},
negative {total['negative']:.3f}. The real model has residual connections, normalisation, a gate and the
skip term D, none of which the idealised system keeps, so the measured growth need not follow the
prediction; this table shows how far it does.

![Spectra (unedited model): eigenvalues of M_s per layer, red > 0, blue < 0; of M in the plane]({rel['spectra']})

![Token norms of the unedited model through the layers (residual stream) and at each scan's input]({rel['token_norms']})

![Measured norm growth per layer and by token position (unedited model)]({rel['growth']})

![Hidden attention (unedited model): first, middle, last layer; channel 0 and largest mean Δ]({rel['hidden_attention']})

Full report of the unconstrained model: `{rel['html']}`. Analyse your own checkpoint (tokendyn, state-spaces
or HF-transformers layout) with `tokendyn analyze PATH --out DIR`; see docs/analysis.md.
"""
    return SectionResult(markdown=md, summary=summary, checks=analysis_checks(summary))
