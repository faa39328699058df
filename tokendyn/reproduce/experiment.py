"""The report section of a seed-grid experiment (one builder for every description in
:mod:`tokendyn.experiments` that names a ``section``).

quick: the smoke scale, 2 seeds per setting, on the CPU; full: the full scale, 3 seeds (one GPU;
on a CPU the quick scale). Beside this run's table the section shows the committed full-scale
table (results/STEM.json), when there is one, labelled as such. Its checks are the description's
comparisons, judged on the full-scale grid (this run's at full scale, else the committed one),
and the experiment's own (``report_extras``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..provenance import provenance
from ..train.experiment import Experiment
from ..train.grid import run_grid
from ..train.summary import load_summary, markdown
from .section import Context, SectionResult, training_scale

RESULTS = Path(__file__).resolve().parents[2] / "results"


def experiment_source(doc: dict, scale: str, committed: dict | None, stem: str):
    """The full-scale grid a claim's check reads: this run's when it ran at full scale, else the
    committed one (results/STEM.json), else None. Returns (summary, label)."""
    if scale == "full":
        return doc, f"this run ({doc.get('device')})"
    if committed is not None:
        commits = committed.get("runs_commits") or [committed.get("commit")]      # where the runs were trained
        return committed, (f"committed full-scale run results/{stem}.json ({committed.get('device')}, commit "
                           f"{', '.join(str(c)[:7] for c in commits)})")
    return None, ""


def comparison_checks(exp: Experiment, source: dict | None, label: str, how: str) -> list:
    """The description's comparisons as checks on ``source`` (None: not run), and where the
    experiment reads them at the best validation step too, those readings (the project's)."""
    tested = exp.comparisons_for((source or {}).get("settings", {}))
    checks = [c.check(source, label, exp.metric, how) for c in tested]
    es = exp.early_stopping
    if es is not None and source is not None:
        read = es.metric(exp.metric)
        checks += [es.comparison(c).check(source, label, read, how) for c in tested
                   if c.judge(source.get("settings", {}), read)["diff"] is not None]
    return checks


def run_section(exp: Experiment, ctx: Context, committed_path: Path | None = None) -> SectionResult:
    """Run ``exp``'s grid at the context's training scale into OUT/<section>/ and build its section."""
    scale, seeds = training_scale(ctx)
    folder = exp.section or exp.stem
    doc = run_grid(exp, ctx.out / folder, scale=scale, seeds=seeds, device=ctx.device, progress=False,
                   log=lambda line: print(f"  {line}", flush=True), provenance=provenance(ctx.command))
    committed_path = committed_path or RESULTS / f"{exp.stem}.json"
    committed = load_summary(committed_path)
    parts = [f"**This run** ({scale} scale, {doc['device']}; files in `{folder}/`):", "", markdown(exp, doc),
             *(f"![{f.caption}]({folder}/{f.file})" for f in exp.figures), ""]
    if committed is not None:
        commits = committed.get("runs_commits") or [committed.get("commit")]
        parts += [f"**Committed full-scale run** (results/{exp.stem}.json: {committed.get('device')}, commit "
                  f"{', '.join(str(c)[:10] for c in commits)}, {committed.get('date', 'date not recorded')}):", "",
                  markdown(exp, committed)]
    else:
        parts += [f"No committed full-scale table (results/{exp.stem}.json) is present in this tree."]
    parts += ["", exp.report_note]
    key = exp.metric.key

    def values(d: dict) -> dict:
        return {s: v[key] for s, v in d.get("settings", {}).items()}

    summary = {"scale": scale, "seeds": list(seeds), key: values(doc),
               f"{key}_mean": {s: v[f"{key}_mean"] for s, v in doc["settings"].items()},
               "comparisons": doc["comparisons"], "tokens_seen": doc["tokens_seen"],
               "committed": None if committed is None else {
                   "device": committed.get("device"), "commit": committed.get("commit"), key: values(committed)}}
    source, label = experiment_source(doc, scale, committed, exp.stem)
    how = exp.full_run or (f"run `tokendyn train {exp.name} --scale full --device cuda` "
                           "(or `tokendyn reproduce --scale full --device cuda`)")
    checks = comparison_checks(exp, source, label, how)
    if exp.report_extras is not None:
        more, entries = exp.report_extras(doc, committed, scale, how)
        checks += more
        summary.update(entries)
    return SectionResult(markdown="\n".join(parts), summary=summary, checks=checks)


@dataclass(frozen=True)
class ExperimentSection:
    """A section of ``tokendyn reproduce`` made from an experiment (TITLE and run, as a section module)."""

    experiment: Experiment

    @property
    def TITLE(self) -> str:  # the section interface's name
        return self.experiment.title

    def run(self, ctx: Context) -> SectionResult:
        return run_section(self.experiment, ctx)
