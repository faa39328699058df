"""The main job's report as one data structure, written three ways from it:
``report.json`` (the structure itself), ``report.md`` and ``index.html`` (one
self-contained page, figures embedded).

The structure: ``provenance`` (device, date, commit, command, versions), ``scale``,
``checks`` (every section's checks, each {section, claim, tolerance, measured,
outcome, note}), ``outcomes`` (counts), ``sections`` ({name: {title, seconds,
markdown, checks, figures, ...the section's summary}}), ``committed_results``
(tables of the GPU results in results/), ``not_run`` ({what, how}).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..report import Check, Figure, count_failures, count_outcomes, is_finding, shown_outcome
from ..report.page import checks_table, esc, markdown_inline, markdown_to_html, page, table
from .section import SECTIONS


def section_entry(name: str, title: str, seconds: float, result) -> dict:
    """The report's record of one section from its SectionResult (summary keys kept at top level)."""
    checks = []
    for c in result.checks:
        c = c if isinstance(c, Check) else Check.from_json(c)
        c.section = name
        checks.append(c.to_json())
    figures = [(f if isinstance(f, Figure) else Figure(*f)).to_json() for f in result.figures]
    return {"title": title, "seconds": round(seconds, 2), **result.summary,
            "markdown": result.markdown.strip(), "checks": checks, "figures": figures}


def finish(report: dict, skipped: list[str], committed: list[dict]) -> dict:
    """Add the collected checks, their counts, the committed results and what was not run."""
    report["checks"] = [c for s in report["sections"].values() for c in s["checks"]]
    report["outcomes"] = count_outcomes(report["checks"])
    report["committed_results"] = committed
    not_run = [{"what": f"section {name}", "how": f"`tokendyn reproduce --scale {report['scale']} --only {name}`"}
               for name in skipped]
    not_run += [{"what": c["claim"].rstrip("."), "how": c["note"]}
                for c in report["checks"] if c["outcome"] == "not run"]
    if report["scale"] == "quick":
        not_run.append({"what": "the full scale: larger models, longer inputs and more random draws in every "
                                "section",
                        "how": "`tokendyn reproduce --scale full`" + _full_run_time()})
    report["not_run"] = not_run
    return report


def _full_run_time() -> str:
    """The measured time of the committed full-scale run, from its report.json (results/reproduce_full_cpu/),
    as a parenthesis; nothing where there is none (an installed copy)."""
    from .committed import results_dir

    folder = results_dir()
    path = folder / "reproduce_full_cpu" / "report.json" if folder is not None else None
    try:
        d = json.loads(path.read_text()) if path is not None and path.is_file() else None
        seconds = sum(float(s["seconds"]) for s in d["sections"].values()) if d else None
    except (OSError, ValueError, KeyError, TypeError):
        seconds = None
    if not seconds:
        return ""
    p = d.get("provenance", {})
    return (f" (the committed full run, results/reproduce_full_cpu/, spent {seconds / 60:.1f} minutes in its "
            f"sections on {p.get('device', 'an unrecorded device')} at commit {p.get('commit') or 'unknown'})")


FINDING_NOTE = ("the software worked and measured a claim of the paper (or of its theory, or of a project's "
                "variant, labelled as such) that did not hold here")


def _outcome_line(outcomes: dict, checks: list[dict]) -> str:
    f = count_failures(checks)
    return (f"{outcomes['pass']} pass, {f['software failure']} software failure(s), {f['finding']} finding(s), "
            f"{outcomes['not run']} not run. A finding: {FINDING_NOTE}; a fail: a fault of the software")


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(columns, rows) -> list[str]:
    return ["| " + " | ".join(_md_cell(c) for c in columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(_md_cell(v) for v in r) + " |" for r in rows)]


def _md_checks(checks: list[dict], with_section: bool) -> list[str]:
    cols = (["section"] if with_section else []) + ["claim", "tolerance", "measured", "outcome"]
    rows = [([c["section"]] if with_section else []) +
            [c["claim"], c["tolerance"], c["measured"] + (f" — {c['note']}" if c.get("note") else ""),
             f"**{shown_outcome(c)}**"] for c in checks]
    return _md_table(cols, rows)


def _section_body_md(s: dict) -> str:
    """The section's markdown, with its figures that the text does not show appended."""
    body = s["markdown"]
    extra = [f"![{f['caption'] or Path(f['path']).stem}]({f['path']})" for f in s.get("figures", [])
             if f"({f['path']})" not in body]
    return body + ("\n\n" + "\n\n".join(extra) if extra else "")


def _header_fields(report: dict) -> list[tuple[str, str]]:
    p = report["provenance"]
    return [("scale", report["scale"]), ("device", p.get("device")), ("commit", p.get("commit") or "unknown"),
            ("date", p.get("date")), ("command", p.get("command")),
            ("versions", f"torch {p.get('torch')}, Python {p.get('python')}")] + (
        [("page redrawn", f"{r['date']} by commit {r['commit'] or 'unknown'} from the run's stored numbers "
                          "(nothing measured again)")] if (r := report.get("rerendered")) else [])


def to_markdown(report: dict) -> str:
    """report.md."""
    lines = [f"# tokendyn reproduce ({report['scale']})", ""]
    lines += [f"- {k}: {v}" for k, v in _header_fields(report)]
    lines += ["", "## Checks", "", f"{_outcome_line(report['outcomes'], report['checks'])}.", ""]
    lines += _md_checks(report["checks"], True) if report["checks"] else ["No checks in the sections run."]
    for s in report["sections"].values():
        lines += ["", f"## {s['title']}", ""]
        if s["checks"]:
            lines += ["Verdict:", "", *_md_checks(s["checks"], False), ""]
        lines += [_section_body_md(s), "", f"_Section time: {s['seconds']:.1f} s._"]
    lines += ["", "## Committed GPU results", ""] + _committed_md(report["committed_results"])
    lines += ["", "## Not run at this scale", ""]
    lines += [f"- {n['what']}: {n['how']}" for n in report["not_run"]] or ["Everything was run."]
    return "\n".join(lines) + "\n"


COMMITTED_INTRO = ("Measured earlier on a GPU and committed under results/ (each file names its device, commit "
                   "and date); not measured by this run. Where this run measured the same quantity, its "
                   "numbers stand in the same table, marked \"this run\".")


def _committed_md(tables: list[dict]) -> list[str]:
    if not tables:
        return ["No committed GPU results found (results/ is part of a checkout, not of an installed copy)."]
    tables, older = _superseded(tables)
    lines = [COMMITTED_INTRO]
    if older:
        lines += ["", "Earlier measurements kept in results/ for the record: " + "; ".join(
            f"`{t['file']}` ({t['date']}), superseded by `{t['superseded_by']}`" for t in older) + "."]
    for t in tables:
        lines += ["", f"### {t['title']}", "",
                  f"`{t['file']}`: device {t['device']}, commit {t['commit'] or 'not recorded'}, date {t['date']}; "
                  f"command `{t['command']}`." + (f" Note: {t['commit_note']}." if t.get("commit_note") else ""), ""]
        lines += _md_table(t["columns"], t["rows"])
    return lines


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


def to_html(report: dict, base: Path) -> str:
    """index.html: the same content as report.md, one self-contained page (figures under ``base``)."""
    titles = {n: s["title"] for n, s in report["sections"].items()}
    o = report["outcomes"]
    def value(k, v):
        return f"<code>{esc(v)}</code>" if k in ("commit", "command") else esc(v)

    header = (f"<h1>tokendyn reproduce: {esc(report['scale'])} scale</h1><dl>"
              + "".join(f"<dt>{esc(k)}</dt><dd>{value(k, v)}</dd>" for k, v in _header_fields(report)) + "</dl>")
    toc = [("checks", "Checks")] + [(f"sec-{n}", s["title"]) for n, s in report["sections"].items()] + \
          [("committed", "Committed GPU results"), ("not-run", "Not run at this scale")]
    nav = ('<nav class="toc" aria-label="contents"><strong>Contents</strong><ol>'
           + "".join(f'<li><a href="#{i}">{esc(t)}</a></li>' for i, t in toc) + "</ol></nav>")
    f = count_failures(report["checks"])
    main = [f'<section id="checks"><h2>Checks</h2><p class="summary">'
            f'<strong>{o["pass"]}</strong> pass, <strong>{f["software failure"]}</strong> software failure(s), '
            f'<strong>{f["finding"]}</strong> finding(s), <strong>{o["not run"]}</strong> not run. '
            f'A <span class="outcome outcome-finding">finding</span> is {esc(FINDING_NOTE)}; a '
            f'<span class="outcome outcome-fail">fail</span> is a fault of the software.</p>'
            + _failed_html(report["checks"], titles)
            + (checks_table(report["checks"], True, titles) if report["checks"]
               else "<p>No checks in the sections run.</p>")
            + "</section>"]
    for name, s in report["sections"].items():
        verdict = ("<h3>Verdict</h3>" + checks_table(s["checks"], with_section=False)) if s["checks"] else ""
        main.append(f'<section id="sec-{esc(name)}" class="report-section"><h2>{esc(s["title"])}</h2>{verdict}'
                    f'{markdown_to_html(_section_body_md(s), base)}'
                    f'<p class="provenance">Section time: {s["seconds"]:.1f} s.</p></section>')
    main.append(f'<section id="committed"><h2>Committed GPU results</h2>{_committed_html(report["committed_results"])}'
                "</section>")
    items = "".join(f"<li>{esc(n['what'])}: {markdown_inline(n['how'])}</li>" for n in report["not_run"])
    main.append(f'<section id="not-run"><h2>Not run at this scale</h2>'
                f'{"<ul>" + items + "</ul>" if items else "<p>Everything was run.</p>"}</section>')
    footer = f"<p>Written by <code>{esc(report['provenance'].get('command'))}</code>; the same numbers are in " \
             "report.md and report.json beside this page.</p>"
    return page(f"tokendyn reproduce ({report['scale']})", "\n".join(main), header, nav, footer)


def _failed_html(checks: list[dict], titles: dict) -> str:
    """The failed checks named right under the counts, each linked to its section: the software's
    failures first, then the findings."""
    out = []
    for head, group in (("Software failures:", [c for c in checks if c["outcome"] == "fail" and not is_finding(c)]),
                        ("Findings (a claim of the paper, or of a project's variant, did not hold here):",
                         [c for c in checks if is_finding(c)])):
        if group:
            items = "".join(f'<li><a href="#sec-{esc(c["section"])}">{esc(titles.get(c["section"], c["section"]))}'
                            f'</a>: {esc(c["claim"])}</li>' for c in group)
            out.append(f'<p>{esc(head)}</p><ul class="failed-list">{items}</ul>')
    return "".join(out)


def _superseded(tables: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the current tables, the earlier measurements that a newer file supersedes)."""
    return [t for t in tables if not t.get("superseded_by")], [t for t in tables if t.get("superseded_by")]


def _committed_html(tables: list[dict]) -> str:
    if not tables:
        return "<p>No committed GPU results found (results/ is part of a checkout, not of an installed copy).</p>"
    tables, older = _superseded(tables)
    out = [f"<p>{esc(COMMITTED_INTRO)}</p>"]
    for t in tables:
        note = f" Note: {esc(t['commit_note'])}." if t.get("commit_note") else ""
        out.append(f'<div class="labelled" id="committed-{_slug(t["file"])}"><h3>{esc(t["title"])}</h3>'
                   f'<p class="provenance">Committed result <code>{esc(t["file"])}</code>: device '
                   f'<strong>{esc(t["device"])}</strong>, commit <code>{esc(t["commit"] or "not recorded")}</code>, '
                   f'date {esc(t["date"])}; command <code>{esc(t["command"])}</code>.{note}</p>'
                   f'{table(t["columns"], t["rows"], numeric=range(2, len(t["columns"])))}</div>')
    if older:
        items = "".join(f'<li><code>{esc(t["file"])}</code> ({esc(t["date"])}), superseded by '
                        f'<code>{esc(t["superseded_by"])}</code></li>' for t in older)
        out.append(f'<p>Earlier measurements kept in results/ for the record:</p><ul>{items}</ul>')
    return "".join(out)


def render(report: dict, base: Path) -> dict[str, str]:
    """{file name: text} of report.json, report.md and index.html (figures read from ``base``)."""
    return {"report.json": json.dumps(report, indent=2, default=str), "report.md": to_markdown(report),
            "index.html": to_html(report, base)}


def write(report: dict, out: Path) -> dict[str, Path]:
    """report.json, report.md and index.html into ``out`` (figures must already be there)."""
    paths = {"json": out / "report.json", "markdown": out / "report.md", "html": out / "index.html"}
    texts = render(report, out)
    for key, name in (("json", "report.json"), ("markdown", "report.md"), ("html", "index.html")):
        paths[key].write_text(texts[name], encoding="utf-8")
    return paths


def _legacy_checks(name: str, section: dict, out: Path) -> list[Check]:
    """The checks of a section of a report written before checks existed, judged from the
    numbers that run stored (its section JSON files and report.json)."""
    from . import verdicts

    def stored(file: str) -> dict | None:
        path = out / file
        return json.loads(path.read_text()) if path.is_file() else None

    if name == "core" and (core := stored("core.json")):
        gen = core.get("generation", {})
        return verdicts.core_checks(core["backends"], gen.get("matches_full_forward_argmax"),
                                    core.get("input", {}).get("device", "?"))
    if name == "theory" and (theory := stored("theory.json")):
        return verdicts.theory_checks(theory)
    if name == "analysis":
        return verdicts.analysis_checks(section)
    return []


# Checks of the software's own contract, in reports written before checks had a kind: the core section's,
# and the io_constraint construction's; every other check there tested a claim of the paper or its theory.
_LEGACY_SOFTWARE = ("io_constraint=", "From the signature")


def _legacy_kind(check: dict) -> str:
    software = check.get("section") == "core" or check.get("claim", "").startswith(_LEGACY_SOFTWARE)
    return "software" if software else "claim"


def load(out: Path) -> dict:
    """The report structure of the run in ``out`` (its report.json).

    A report.json written before checks existed (no ``markdown`` per section) is completed:
    each section's text is taken from report.md and its checks are judged from the numbers
    that run stored; nothing is measured again."""
    from .committed import committed_results

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    sections = report.get("sections", {})
    for c in [*report.get("checks", []), *(c for s in sections.values() for c in s.get("checks", []))]:
        c.setdefault("kind", _legacy_kind(c))
    if "checks" in report and all("markdown" in s for s in sections.values()):
        return report
    parts = re.split(r"^## (.+)$", (out / "report.md").read_text(encoding="utf-8"), flags=re.M)
    bodies = {title.strip(): body for title, body in zip(parts[1::2], parts[2::2])}
    for name, s in sections.items():
        body = re.sub(r"_Section time: [^_]*_\s*$", "", bodies.get(s["title"], "")).strip()
        checks = _legacy_checks(name, s, out)
        for c in checks:
            c.section = name
        s.update(markdown=body, checks=[c.to_json() for c in checks], figures=[])
    skipped = [n for n in SECTIONS if n not in sections]
    core = sections.get("core", {})
    this = {"scale": report["scale"], "device": report["provenance"]["device"], "core_backends": core.get("backends")}
    return finish(report, skipped, committed_results(this))
