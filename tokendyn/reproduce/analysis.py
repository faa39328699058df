"""Section "analysis": the checkpoint analysis of ``tokendyn analyze`` on a small model.

A small byte-level MambaLM (random initialisation, mamba_ssm's init) is analysed
beside two models of the same configuration and seed built with the sign constraint of
THEORY.md section 5 (``io_constraint="positive"``: M = S_Cᵀ S_B positive on its
N-dimensional range; ``"negative"``). The spectrum predicts the regime of each layer (THEORY.md
section 4); one forward pass on held-out Bible verses gives each layer's real scan input, on
which the theory's own quantities are measured: the radial velocity under the layer's scan and
the idealised flow on the layer's parameters (:mod:`tokendyn.analysis.layer_flow`). The same
checks on trained models belong to the lm section, which has them. The unconstrained model's
report (HTML, PNGs, JSON) goes to ``OUT/analysis/``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..analysis.analyze import InputTokens, analyze_model, write_analysis
from ..analysis.render import flow_cell
from ..data.text import bible_verses, byte_tokens
from ..model import MambaConfig, MambaLM
from ..provenance import provenance
from ..report import Check
from .section import Context, SectionResult
from .verdicts import analysis_checks

TITLE = "Checkpoint analysis"

SETTINGS = {
    "quick": {"d_model": 64, "n_layer": 4, "tokens": 512},
    "full": {"d_model": 256, "n_layer": 12, "tokens": 1024},
}
VARIANTS = ("init", "positive", "negative")
# the Mamba-2 item: a small SSD model beside the Mamba-1 ones (its flow from fewer tokens: the SSD flow
# moves d_model-wide tokens and costs more per evaluation)
MAMBA2 = {"quick": {"d_model": 32, "n_layer": 2, "head_dim": 16, "d_state": 8, "n_groups": 2, "tokens": 256,
                    "flow_tokens": 64},
          "full": {"d_model": 256, "n_layer": 4, "head_dim": 64, "d_state": 64, "n_groups": 2, "tokens": 1024,
                   "flow_tokens": 128}}


def held_out_bytes(n: int) -> torch.Tensor:
    """The first n bytes of the last 10% of the verses (byte tokens), (n,) int64."""
    verses = bible_verses()
    return byte_tokens("\n".join(verses[int(0.9 * len(verses)):]))[:n]


def _model(config: MambaConfig, device) -> MambaLM:
    # the same seed for every setting: the constrained models share the unconstrained one's
    # other weights and take U's free entries from its C rows (tokendyn.model.io_constraint)
    torch.manual_seed(0)
    return MambaLM(config).to(device).eval()


LABELS = {"init": "unconstrained", "positive": "positive", "negative": "negative"}


def _table(results: dict) -> str:
    rows = ["| model | layer | M_s +/−/0 | predicted regime | radial velocity: median (share > 0) | idealised flow "
            "| residual growth |", "|---|---|---|---|---|---|---|"]
    for v in VARIANTS:
        for r in results[v]["layers"]:
            rv = r["radial_velocity"]
            rows.append(f"| {LABELS[v]} | {r['index']} | {r['io_eigs_positive']}/{r['io_eigs_negative']}/"
                        f"{r['io_eigs_zero']} | {r['predicted_regime']} | {rv['median']:+.4f} "
                        f"({rv['positive_share']:.2f}) | {flow_cell(r['flow'])} | {r['norm_growth']:.3f} |")
    return "\n".join(rows)


def _brief(data: dict) -> dict:
    """The section's summary of one model: its analysis summary and per layer the signature, the
    regime, the residual growth, and the in-layer rows :func:`inlayer_checks` reads."""
    keys = ("index", "io_eigs_positive", "io_eigs_negative", "io_eigs_zero", "predicted_regime", "verdict",
            "norm_growth")
    layers = []
    for r in data["layers"]:
        row = {k: r[k] for k in keys}
        flow = r["flow"] or {}
        row.update({"layer": r["index"], "radial_velocity": r["radial_velocity"]["median"],
                    "radial_velocity_share": r["radial_velocity"]["positive_share"],
                    "flow": flow.get("verdict"), "flow_ratio": flow.get("ratio_at_t_end"),
                    "flow_blowup": flow.get("blowup_time"), "flow_time": flow.get("t_end")})
        layers.append(row)
    return {"summary": data["summary"], "position_spearman": data["growth_by_position"]["spearman"],
            "layers": layers}


def _mamba2(ctx: Context, out) -> tuple[dict, str, list[Check]]:
    """Analyse a small random Mamba-2 model: (its brief, the section's paragraph, its check)."""
    s = MAMBA2["quick" if ctx.quick else "full"]
    torch.manual_seed(0)
    config = MambaConfig(d_model=s["d_model"], n_layer=s["n_layer"], vocab_size=256, layer="mamba2",
                         head_dim=s["head_dim"], d_state=s["d_state"], n_groups=s["n_groups"])
    model = MambaLM(config).to(ctx.device).eval()
    inputs = InputTokens(held_out_bytes(s["tokens"]), "builtin-corpus", "bytes", False,
                         f"the first {s['tokens']} held-out bytes")
    data = analyze_model(model, inputs, layout="in memory", checkpoint="random initialisation (mamba2)",
                         flow_tokens=s["flow_tokens"]).to_json()
    (out / "mamba2.json").write_text(json.dumps(data, indent=1))
    rows = ["| layer | heads: predictions | groups: M_s +/−/0 | radial velocity: median (share > 0) | idealised flow |",
            "|---|---|---|---|---|"]
    for r in data["layers"]:
        rv, ssd = r["radial_velocity"], r["ssd"]
        groups = ", ".join(f"{g['positive']}/{g['negative']}/{g['zero']}" for g in ssd["groups"])
        rows.append(f"| {r['index']} | {', '.join(ssd['head_predictions'])} | {groups} | {rv['median']:+.2e} "
                    f"({rv['positive_share']:.2f}) | {flow_cell(r['flow'])} |")
    md = (f"\n\nA Mamba-2 (SSD) model beside them (d_model {s['d_model']}, {s['n_layer']} layers, head_dim "
          f"{s['head_dim']}, d_state {s['d_state']}, n_groups {s['n_groups']}, random initialisation), analysed the "
          f"same way on {inputs.description}: per group the signature of M_g = W_Cᵀ W_B, per head the prediction of "
          "the [derived] rule of docs/THEORY.md section 4a, the radial velocity of the mixer's input h under the "
          f"layer's own SSD flow, and that flow from the first {s['flow_tokens']} tokens (`analysis/mamba2.json`).\n\n"
          + "\n".join(rows) + "\n\n" + data["theory_scope"]["ssd"] + "\n")
    n_indef = data["summary"]["indefinite_layers"]
    check = Check.judged(
        "A Mamba-2 layer with d_state and head_dim below d_model is outside the SSD rule (indefinite), as "
        "docs/THEORY.md section 4a says of every real layer.",
        "every layer indefinite", f"{n_indef}/{len(data['layers'])}", n_indef == len(data["layers"]))
    brief = {"model": {k: s[k] for k in ("d_model", "n_layer", "head_dim", "d_state", "n_groups")},
             "summary": data["summary"], "predictions": [r["ssd"]["head_predictions"] for r in data["layers"]]}
    return brief, md, [check]


def _analyse_models(models: dict, inputs, out: Path, command: str) -> tuple[dict, dict]:
    """Each model's analysis: the unedited one ("init") written as a full report into ``out``,
    the others as NAME.json beside it. Returns ({name: analysis JSON}, the report's paths)."""
    results, paths = {}, None
    for name, model in models.items():
        analysis = analyze_model(model, inputs, layout="in memory", checkpoint=f"random initialisation ({name})")
        if name == "init":
            paths = write_analysis(analysis, out, provenance=provenance(command))
            results[name] = json.loads(paths["json"].read_text())
        else:
            results[name] = analysis.to_json()
            (out / f"{name}.json").write_text(json.dumps(results[name], indent=1))
    return results, paths


def run(ctx: Context) -> SectionResult:
    s = SETTINGS["quick" if ctx.quick else "full"]
    out = ctx.out / "analysis"
    config = MambaConfig(d_model=s["d_model"], n_layer=s["n_layer"], vocab_size=256)
    inputs = InputTokens(held_out_bytes(s["tokens"]), "builtin-corpus", "bytes", False,
                         f"the first {s['tokens']} bytes of the held-out last 10% of the King James Bible verses "
                         "(byte tokens)")
    models = {"init": _model(config, ctx.device),
              **{v: _model(dataclasses.replace(config, io_constraint=v), ctx.device) for v in ("positive", "negative")}}
    results, paths = _analyse_models(models, inputs, out, ctx.command)

    mamba2, mamba2_md, mamba2_checks = _mamba2(ctx, out)
    summary = {
        "mamba2": mamba2,
        "model": {"d_model": s["d_model"], "n_layer": s["n_layer"], "vocab": "bytes (256)", "d_state": 16},
        "tokens": s["tokens"],
        **{v: _brief(results[v]) for v in VARIANTS},
        "files": {k: str(p.relative_to(ctx.out)) for k, p in paths.items()},
    }
    rel = {k: p.relative_to(ctx.out) for k, p in paths.items()}
    t_end = results["init"]["layers"][0]["flow"]["t_end"]
    flow_tokens = results["init"]["layers"][0]["flow"]["tokens"]
    md = f"""A byte-level MambaLM (d_model {s['d_model']}, {s['n_layer']} layers, d_state 16, random
initialisation) and the same model built with the sign constraint of THEORY.md section 5
(S_C = U, S_B = diag(λ) U, so M = Uᵀ diag(λ) U): "positive" (`io_constraint="positive"`, every λ_i > 0:
M positive on its 16-dimensional range) and "negative" (every λ_i < 0). Input: {inputs.description}.

{_table(results)}

"M_s +/−/0" counts the positive, negative and zero eigenvalues of the symmetric part of M = S_Cᵀ S_B
(from the 2N×2N problem); "predicted regime" is the idealised prediction from that signature. The next two
columns are the theory's own quantities inside each layer (docs/THEORY.md section 4): the radial velocity
⟨u_l, y_l⟩/|u_l|² of the layer's scan input u under its own scan without D and gate (the median over the tokens,
and the share of tokens where it is positive), and the idealised flow of section 2 run on the layer's own
S_B, S_C, S_Δ, b_Δ and A from its first {flow_tokens} real tokens, to t = {t_end:g}. "Residual growth" is the norm
growth of the residual stream through the layer: in a pre-norm model the residual update is nearly orthogonal
to the stream, so the stream grows whatever the sign of M, and this column is no test of the theory.

![Spectra (unedited model): eigenvalues of M_s per layer, red > 0, blue < 0; of M in the plane]({rel['spectra']})

![Radial velocity of the scan input per layer (unedited model)]({rel['radial_velocity']})

![The idealised flow on each layer's parameters from its real tokens (unedited model)]({rel['flow']})

![Token norms of the unedited model through the layers (residual stream) and at each scan's input]({rel['token_norms']})

![Measured norm growth per layer and by token position (unedited model)]({rel['growth']})

![Hidden attention (unedited model): first, middle, last layer; channel 0 and largest mean Δ]({rel['hidden_attention']})

Full report of the unconstrained model: `{rel['html']}`. Analyse your own checkpoint (tokendyn, state-spaces
or HF-transformers layout, Mamba-1 or Mamba-2) with `tokendyn analyze PATH --out DIR`; see docs/analysis.md.
""" + mamba2_md
    return SectionResult(markdown=md, summary=summary, checks=analysis_checks(summary) + mamba2_checks)
