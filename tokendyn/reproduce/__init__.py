"""The main job: sections run in order, each writing figures/JSON into the output
directory and returning a markdown fragment and a JSON-able summary.

A section is a module in this package with
    TITLE: str
    def run(ctx: Context) -> SectionResult
listed in :data:`SECTIONS`, or an experiment of :mod:`tokendyn.experiments` with a ``section``
name (its section is built by :mod:`.experiment`). Its checks (claim, tolerance, measured, outcome)
and figures go into the report's checks table and index.html (docs/report.md).
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import torch

from ..errors import ConfigError, DataError
from ..outputs import check_output_dir, staged_outputs
from ..provenance import provenance
from ..report import count_failures
from ..resources import resolve_device
from .section import (  # noqa: F401 -- the package's names for what the sections share
    EXPERIMENT_SECTIONS,
    SCALES,
    SECTIONS,
    Context,
    SectionResult,
    training_scale,
)


def run_all(out: Path, scale: str = "quick", only: list[str] | None = None, device: str = "auto",
            force: bool = False) -> dict:
    """Run the sections (all, or those named in ``only``) and write index.html, report.md and
    report.json; returns the report (``report["outcomes"]["fail"]``: failed checks).

    Everything is written into a temporary directory and moved into ``out`` only when every
    section has finished (:mod:`tokendyn.outputs`): an interrupted or failed run leaves ``out``
    as it was. With ``only``, the sections of an earlier report in ``out`` that this run does
    not redo stay on the page (the report is merged); report files in ``out`` that tokendyn did
    not write are refused unless ``force``.
    """
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}.")
    unknown = [s for s in (only or []) if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}; sections are {', '.join(SECTIONS)}.")
    device = resolve_device(device)
    out = check_output_dir(out, "--out")
    earlier = _earlier_report(out, force)
    if earlier is not None and only and earlier.get("scale") != scale and not force:
        raise DataError(f"{out} holds a report at scale {earlier.get('scale')}; --only {' '.join(only)} at scale "
                        f"{scale} would mix scales on one page: use --scale {earlier.get('scale')}, another --out, "
                        "or --force to replace it.")
    kept = earlier if (earlier is not None and only and earlier.get("scale") == scale) else None
    command = f"tokendyn reproduce --scale {scale} --out {out}" + "".join(f" --only {s}" for s in only or [])
    with staged_outputs() as staging:
        report = _run_sections(staging.dir(out), scale, only, device, command, kept=kept, earlier_dir=out)
    o = report["outcomes"]
    f = count_failures(report["checks"])
    print(f"checks: {o['pass']} pass, {f['software failure']} software failure(s), {f['finding']} finding(s) (a "
          f"claim of the paper, or of a project's variant, did not hold here), {o['not run']} not run")
    print(f"report written to {out / 'index.html'}, {out / 'report.md'} and {out / 'report.json'}")
    return report


def rerender(out: Path) -> dict:
    """Write index.html, report.md and report.json of the run in ``out`` again from its
    report.json (and, for a report written before checks existed, its report.md and section
    files), with this version's page; nothing is measured again. Returns the report."""
    from . import document

    out = check_output_dir(out, "--out")
    if not (out / "report.json").is_file():
        raise DataError(f"{out} holds no report.json of a tokendyn reproduce run.")
    try:
        report = document.load(out)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{out / 'report.json'} is not a report of tokendyn reproduce ({exc}).") from None
    # the numbers stay the run's; the page says when and by which code it was drawn again
    p = provenance(f"tokendyn reproduce --rerender --out {out}")
    report["rerendered"] = {k: p[k] for k in ("date", "commit", "command")}
    with staged_outputs() as staging:
        staged = staging.dir(out)
        for name, text in document.render(report, out).items():
            (staged / name).write_text(text, encoding="utf-8")
    return report


REPORT_FILES = ("index.html", "report.md", "report.json")


def _earlier_report(out: Path, force: bool) -> dict | None:
    """The report of an earlier ``tokendyn reproduce`` in ``out`` (None: there is none, or
    ``force`` and it is not tokendyn's). Report files that tokendyn did not write (a user's own
    index.html) are refused: they would be replaced."""
    from . import document

    present = [n for n in REPORT_FILES if (out / n).exists()]
    if not present:
        return None
    try:
        report = document.load(out)
        if not isinstance(report.get("sections"), dict) or "provenance" not in report:
            raise ValueError("not a report")
        return report
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        if force:
            return None
        raise DataError(f"{out} holds {', '.join(present)} that tokendyn reproduce did not write; choose another "
                        "--out, or pass --force to replace them.") from None


def _figure_paths(section: dict) -> set[str]:
    """The figure files (relative paths) a section's entry shows."""
    import re

    paths = {f["path"] for f in section.get("figures", []) if isinstance(f, dict) and "path" in f}
    paths |= set(re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", section.get("markdown", "")))
    return {p for p in paths if "://" not in p and not p.startswith("data:")}


def _keep_sections(report: dict, kept: dict, staged: Path, earlier_dir: Path) -> None:
    """Put the earlier report's sections that this run did not redo into ``report`` (in the
    order of SECTIONS), their figures copied beside the new ones so the page embeds them."""
    import shutil

    merged = {}
    for name in [*SECTIONS, *kept["sections"]]:
        if name in merged:
            continue
        if name in report["sections"]:
            merged[name] = report["sections"][name]
        elif name in kept["sections"]:
            merged[name] = kept["sections"][name]
            for rel in _figure_paths(merged[name]):
                src, dst = earlier_dir / rel, staged / rel
                if src.is_file() and not dst.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
    report["sections"] = merged


def _run_sections(out: Path, scale: str, only: list[str] | None, device: str, command: str,
                  kept: dict | None = None, earlier_dir: Path | None = None) -> dict:
    from . import document
    from .committed import committed_results
    from .experiment import ExperimentSection

    ctx = Context(out=out, scale=scale, device=torch.device(device), command=command)
    report = {"provenance": provenance(command),
              "scale": scale, "sections": {}}
    for name in SECTIONS:
        if only and name not in only:
            continue
        module = (ExperimentSection(EXPERIMENT_SECTIONS[name]) if name in EXPERIMENT_SECTIONS
                  else importlib.import_module(f"{__name__}.{name}"))
        print(f"== {module.TITLE}", flush=True)
        t0 = time.perf_counter()
        res: SectionResult = module.run(ctx)
        seconds = time.perf_counter() - t0
        report["sections"][name] = document.section_entry(name, module.TITLE, seconds, res)
    if kept is not None:
        _keep_sections(report, kept, out, earlier_dir)
    skipped = [n for n in SECTIONS if n not in report["sections"]]
    core = report["sections"].get("core", {})
    this = {"scale": scale, "device": report["provenance"]["device"], "core_backends": core.get("backends")}
    document.finish(report, skipped, committed_results(this))
    document.write(report, out)
    return report
