"""The main job: sections run in order, each writing figures/JSON into the output
directory and returning a markdown fragment and a JSON-able summary.

A section is a module in this package with
    TITLE: str
    def run(ctx: Context) -> SectionResult
and is listed in :data:`SECTIONS`.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError
from ..outputs import check_output_dir, staged_outputs
from ..provenance import provenance
from ..resources import resolve_device

SECTIONS: list[str] = [
    "core",
    "theory",
    "analysis",
    "lm",
    "reorder",
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
    markdown: str
    summary: dict = field(default_factory=dict)


def run_all(out: Path, scale: str = "quick", only: list[str] | None = None, device: str = "auto") -> dict:
    """Run the sections (all, or those named in ``only``) and write report.md / report.json.

    Everything is written into a temporary directory and moved into ``out`` only when every
    section has finished (:mod:`tokendyn.outputs`): an interrupted or failed run leaves ``out``
    as it was.
    """
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}.")
    unknown = [s for s in (only or []) if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}; sections are {', '.join(SECTIONS)}.")
    device = resolve_device(device)
    out = check_output_dir(out, "--out")
    command = f"tokendyn reproduce --scale {scale} --out {out}" + "".join(f" --only {s}" for s in only or [])
    with staged_outputs() as staging:
        report = _run_sections(staging.dir(out), scale, only, device, command)
    print(f"report written to {out / 'report.md'} and {out / 'report.json'}")
    return report


def _run_sections(out: Path, scale: str, only: list[str] | None, device: str, command: str) -> dict:
    ctx = Context(out=out, scale=scale, device=torch.device(device), command=command)
    report = {"provenance": provenance(command),
              "scale": scale, "sections": {}}
    parts = [f"# tokendyn reproduce ({scale})\n",
             f"Device: {report['provenance']['device']}. Date: {report['provenance']['date']}. "
             f"Commit: {report['provenance']['commit']}.\n"]
    for name in SECTIONS:
        if only and name not in only:
            continue
        module = importlib.import_module(f"{__name__}.{name}")
        print(f"== {module.TITLE}", flush=True)
        t0 = time.perf_counter()
        res: SectionResult = module.run(ctx)
        seconds = time.perf_counter() - t0
        report["sections"][name] = {"title": module.TITLE, "seconds": round(seconds, 2), **res.summary}
        parts.append(f"## {module.TITLE}\n\n{res.markdown.strip()}\n\n_Section time: {seconds:.1f} s._\n")
    (out / "report.md").write_text("\n".join(parts))
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report
