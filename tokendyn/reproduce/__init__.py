"""The main job: sections run in order, each writing figures/JSON into the output
directory and returning a markdown fragment and a JSON-able summary.

A section is a module in this package with
    TITLE: str
    def run(ctx: Context) -> SectionResult
and is listed in :data:`SECTIONS`. Its checks (claim, tolerance, measured, outcome)
and figures go into the report's checks table and index.html (docs/report.md).
"""

from __future__ import annotations

import importlib
import platform
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..errors import ConfigError

SECTIONS: list[str] = [
    "core",
    "theory",
    "analysis",
]

SCALES = ("quick", "full")


@dataclass
class Context:
    out: Path
    scale: str
    device: torch.device
    command: str = ""

    @property
    def quick(self) -> bool:
        return self.scale == "quick"


@dataclass
class SectionResult:
    """markdown: the section's text; summary: JSON-able numbers for report.json;
    checks: tokendyn.report.Check verdicts; figures: tokendyn.report.Figure files
    (paths relative to the output directory) not already shown in the markdown."""

    markdown: str
    summary: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)
    figures: list = field(default_factory=list)


def git_commit() -> str | None:
    """The commit of the working tree tokendyn runs from: the environment variable
    TOKENDYN_COMMIT where set (a copy of the tree, e.g. a ``git archive`` on a separate
    benchmark machine, possibly inside some other checkout whose HEAD git would report),
    else git's answer in a checkout, else None."""
    import os

    env = os.environ.get("TOKENDYN_COMMIT") or None
    if env:
        return env
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return env
    commit = res.stdout.strip()
    # outside a checkout git fails (or echoes the ref): only a full hash is a commit
    if res.returncode != 0 or len(commit) != 40:
        return env
    return commit


def provenance(command: str | None = None) -> dict:
    """Where numbers came from: device, date, commit, command, versions."""
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})"
    return {
        "device": dev,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": command,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def run_all(out: Path, scale: str = "quick", only: list[str] | None = None, device: str = "auto") -> dict:
    """Run the sections (all, or those named in ``only``) and write index.html, report.md and
    report.json; returns the report (``report["outcomes"]["fail"]``: failed checks)."""
    from . import document
    from .committed import committed_results

    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}.")
    unknown = [s for s in (only or []) if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}; sections are {', '.join(SECTIONS)}.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    out.mkdir(parents=True, exist_ok=True)
    command = f"tokendyn reproduce --scale {scale} --out {out}" + "".join(f" --only {s}" for s in only or [])
    ctx = Context(out=out, scale=scale, device=torch.device(device), command=command)
    report = {"provenance": provenance(command),
              "scale": scale, "sections": {}}
    for name in SECTIONS:
        if only and name not in only:
            continue
        module = importlib.import_module(f"{__name__}.{name}")
        print(f"== {module.TITLE}", flush=True)
        t0 = time.perf_counter()
        res: SectionResult = module.run(ctx)
        seconds = time.perf_counter() - t0
        report["sections"][name] = document.section_entry(name, module.TITLE, seconds, res)
    skipped = [n for n in SECTIONS if n not in report["sections"]]
    core = report["sections"].get("core", {})
    this = {"scale": scale, "device": report["provenance"]["device"], "core_backends": core.get("backends")}
    document.finish(report, skipped, committed_results(this))
    paths = document.write(report, out)
    o = report["outcomes"]
    print(f"checks: {o['pass']} pass, {o['fail']} fail, {o['not run']} not run")
    print(f"report written to {paths['html']}, {paths['markdown']} and {paths['json']}")
    return report
