"""Section "reorder": image classifiers without and with token reordering (THEORY.md section 6),
trained by ``tokendyn train reorder``.

quick: the smoke scale on Fashion-MNIST (2,000 training images), 2 seeds per setting, on the
CPU; full: the full scale, 3 seeds (one GPU). Beside this run's table the section shows the
committed full-scale table (results/reorder.json), when there is one, labelled as such.
"""

from __future__ import annotations

from pathlib import Path

from ..train.reordering import load_committed, markdown_table, mean_std, run_grid
from . import Context, SectionResult, provenance, training_scale
from .verdicts import experiment_source, separated_check

TITLE = "Token reordering in an image classifier"

COMMITTED = Path(__file__).resolve().parents[2] / "results" / "reorder.json"


def run(ctx: Context) -> SectionResult:
    scale, seeds = training_scale(ctx)
    out = ctx.out / "reorder"
    doc = run_grid(out, scale=scale, seeds=seeds, device=ctx.device, progress=False,
                   log=lambda line: print(f"  {line}", flush=True), provenance=provenance(ctx.command))
    committed = load_committed(COMMITTED)
    parts = [f"**This run** ({scale} scale, {doc['device']}; files in `reorder/`):", "", markdown_table(doc),
             "![validation accuracy](reorder/reorder.png)", ""]
    if committed is not None:
        parts += [f"**Committed full-scale run** (results/reorder.json: {committed.get('device')}, commit "
                  f"{str(committed.get('commit'))[:10]}):", "", markdown_table(committed)]
    else:
        parts += ["No committed full-scale table (results/reorder.json) is present in this tree."]
    parts += ["", "The smoke scale trains tiny classifiers on 2,000 images for two epochs: its numbers show that "
              "the pipeline runs, not how the settings compare. Differences are read against the seed spread."]

    def accs(d):
        return {s: {"test_acc": v["test_acc"], "mean": mean_std(v["test_acc"])[0]} for s, v in d["settings"].items()}
    summary = {"scale": scale, "seeds": list(seeds), "test_acc": accs(doc),
               "committed": None if committed is None else {"device": committed.get("device"),
                                                            "commit": committed.get("commit"),
                                                            "test_acc": accs(committed)}}
    source, label = experiment_source(doc, scale, committed, "reorder")
    how = "run `tokendyn train reorder --scale full --device cuda` (or `tokendyn reproduce --scale full --device cuda`)"
    checks = [
        separated_check("Paper (section 6): reordering tokens by importance (hard) improves test accuracy.",
                        source, label, "test_acc", "hard", "none", how, higher_is_better=True),
        separated_check("Paper (section 6): reordering tokens by importance (soft, SoftSort) improves test accuracy.",
                        source, label, "test_acc", "soft", "none", how, higher_is_better=True),
    ]
    return SectionResult(markdown="\n".join(parts), summary=summary, checks=checks)
