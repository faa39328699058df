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
from pathlib import Path

from ..report import Check, Figure, count_outcomes
from ..report.page import checks_table, esc, markdown_inline, markdown_to_html, page, table


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
        not_run.append({"what": "the full scale: larger models (d_model 256) and more random systems "
                                "(200 one-dimensional, 40 two-dimensional draws)",
                        "how": "`tokendyn reproduce --scale full` (about 10 minutes on a 2-core CPU)"})
    report["not_run"] = not_run
    return report


def _outcome_line(outcomes: dict) -> str:
    return ", ".join(f"{outcomes[k]} {k}" for k in ("pass", "fail", "not run"))


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(columns, rows) -> list[str]:
    return ["| " + " | ".join(_md_cell(c) for c in columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(_md_cell(v) for v in r) + " |" for r in rows)]


def _md_checks(checks: list[dict], with_section: bool) -> list[str]:
    cols = (["section"] if with_section else []) + ["claim", "tolerance", "measured", "outcome"]
    rows = [([c["section"]] if with_section else []) +
            [c["claim"], c["tolerance"], c["measured"] + (f" — {c['note']}" if c.get("note") else ""),
             f"**{c['outcome']}**"] for c in checks]
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
            ("versions", f"torch {p.get('torch')}, Python {p.get('python')}")]


def to_markdown(report: dict) -> str:
    """report.md."""
    lines = [f"# tokendyn reproduce ({report['scale']})", ""]
    lines += [f"- {k}: {v}" for k, v in _header_fields(report)]
    lines += ["", "## Checks", "", f"{_outcome_line(report['outcomes'])}.", ""]
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
    lines = [COMMITTED_INTRO]
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
    main = [f'<section id="checks"><h2>Checks</h2><p class="summary">'
            f'{"".join(f"<strong>{o[k]}</strong> {esc(k)}, " for k in ("pass", "fail"))}'
            f'<strong>{o["not run"]}</strong> not run.</p>'
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


def _committed_html(tables: list[dict]) -> str:
    if not tables:
        return "<p>No committed GPU results found (results/ is part of a checkout, not of an installed copy).</p>"
    out = [f"<p>{esc(COMMITTED_INTRO)}</p>"]
    for t in tables:
        note = f" Note: {esc(t['commit_note'])}." if t.get("commit_note") else ""
        out.append(f'<div class="labelled" id="committed-{_slug(t["file"])}"><h3>{esc(t["title"])}</h3>'
                   f'<p class="provenance">Committed result <code>{esc(t["file"])}</code>: device '
                   f'<strong>{esc(t["device"])}</strong>, commit <code>{esc(t["commit"] or "not recorded")}</code>, '
                   f'date {esc(t["date"])}; command <code>{esc(t["command"])}</code>.{note}</p>'
                   f'{table(t["columns"], t["rows"], numeric=range(2, len(t["columns"])))}</div>')
    return "".join(out)


def write(report: dict, out: Path) -> dict[str, Path]:
    """report.json, report.md and index.html into ``out`` (figures must already be there)."""
    paths = {"json": out / "report.json", "markdown": out / "report.md", "html": out / "index.html"}
    paths["json"].write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    paths["markdown"].write_text(to_markdown(report), encoding="utf-8")
    paths["html"].write_text(to_html(report, out), encoding="utf-8")
    return paths
