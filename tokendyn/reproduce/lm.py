"""Section "lm": language models with S_Cᵀ S_B unconstrained, positive, negative and mixed
(THEORY.md section 5), trained by ``tokendyn train lm-scenarios``.

quick: the smoke scale on the built-in corpus, 2 seeds per setting, on the CPU; full: the
full scale, 3 seeds (one GPU). Beside this run's table the section shows the committed
full-scale table (results/lm_scenarios.json), when there is one, labelled as such.
"""

from __future__ import annotations

from pathlib import Path

from ..train.scenarios import inlayer_table, load_committed, markdown_table, run_grid
from . import Context, SectionResult, provenance, training_scale
from .verdicts import experiment_source, inlayer_checks, separated_check

TITLE = "Language models with a sign-constrained S_Cᵀ S_B"

COMMITTED = Path(__file__).resolve().parents[2] / "results" / "lm_scenarios.json"


def run(ctx: Context) -> SectionResult:
    scale, seeds = training_scale(ctx)
    out = ctx.out / "lm"
    doc = run_grid(out, scale=scale, seeds=seeds, device=ctx.device, progress=False,
                   log=lambda line: print(f"  {line}", flush=True), provenance=provenance(ctx.command))
    committed = load_committed(COMMITTED)
    parts = [f"**This run** ({scale} scale, {doc['device']}; files in `lm/`):", "", markdown_table(doc),
             inlayer_table(doc),
             "![validation curves](lm/lm_scenarios_val.png)",
             "![radial velocity per layer after training](lm/lm_scenarios_inlayer.png)",
             "![spectra](lm/lm_scenarios_spectra.png)",
             "![token norms](lm/lm_scenarios_token_norms.png)", ""]
    if committed is not None:
        parts += [f"**Committed full-scale run** (results/lm_scenarios.json: {committed.get('device')}, commit "
                  f"{str(committed.get('commit'))[:10]}, {committed.get('date', 'date not recorded')}):", "",
                  markdown_table(committed)]
    else:
        parts += ["No committed full-scale table (results/lm_scenarios.json) is present in this tree."]
    parts += ["", "The smoke scale trains tiny models for seconds: its numbers show that the pipeline runs, "
              "not how the settings compare. Differences are read against the seed spread (the ratio column)."]
    summary = {"scale": scale, "seeds": list(seeds),
               "test_ppl": {s: v["test_ppl"] for s, v in doc["settings"].items()},
               "comparisons": doc["comparisons"], "tokens_seen": doc["tokens_seen"],
               "committed": None if committed is None else {
                   "device": committed.get("device"), "commit": committed.get("commit"),
                   "test_ppl": {s: v["test_ppl"] for s, v in committed.get("settings", {}).items()}}}
    source, label = experiment_source(doc, scale, committed, "lm_scenarios")
    how = "run `bash scripts/lm_scenarios_gpu.sh OUT` (or `tokendyn reproduce --scale full --device cuda`)"
    checks = paper_comparisons(source, label, how)
    checks += trained_inlayer_checks(doc, f"after training (this run's grid, {scale} scale, all seeds)")
    if scale != "full":
        label = (f"after training (committed full-scale grid results/lm_scenarios.json, {committed.get('device')})"
                 if committed is not None else "after training (committed full-scale grid)")
        checks += trained_inlayer_checks(committed, label, how)
    summary["inlayer_final"] = {s: v.get("monitor_final") for s, v in doc["settings"].items()}
    return SectionResult(markdown="\n".join(parts), summary=summary, checks=checks)


def paper_comparisons(source, label: str, how: str) -> list:
    """The paper's comparisons (THEORY.md section 5), each against the seed spread: negative worst,
    against every other setting; positive best, against mixed and negative (the paper's: the
    authors trained no unconstrained model) and against none (the project's addition)."""
    others = ["none", "positive", "mixed"] + (["mixed_margin"] if "mixed_margin" in (source or {}).get("settings", {})
                                              else [])
    checks = [separated_check(("Project's variant mixed_margin (mixed with ε): " if other == "mixed_margin" else
                               "Paper (section 5): ") + f"the negative setting gives worse perplexity than {other}.",
                              source, label, "test_ppl", other, "negative", how, higher_is_better=False)
              for other in others]
    checks += [separated_check(f"Paper (section 5): the positive setting gives the best perplexity: better than "
                               f"{other}.", source, label, "test_ppl", "positive", other, how, higher_is_better=False)
               for other in ("mixed", "negative")]
    checks.append(separated_check("Project's addition (the authors trained no unconstrained language model): the "
                                  "positive setting gives better perplexity than none.", source, label, "test_ppl",
                                  "positive", "none", how, higher_is_better=False))
    return checks


def trained_inlayer_checks(doc: dict | None, when: str, how: str = "") -> list:
    """:func:`inlayer_checks` on the regime monitor's last records of a grid's positive and negative
    runs; "not run" where the grid is absent or older than those records."""
    from ..report import Check

    finals = {s: (doc or {}).get("settings", {}).get(s, {}).get("monitor_final") for s in ("positive", "negative")}
    if all(f and isinstance(f[0], list) and f[0] and "radial_velocity" in f[0][0] for f in finals.values()):
        return inlayer_checks(finals, when)
    return [Check.not_run(f"Positive and negative S_Cᵀ S_B, {when}: the radial velocity and the idealised flow "
                          "of every layer follow the sign of M.",
                          "every layer of every seed",
                          "the grid holds no end-of-training in-layer records (it predates them); " + how)]
