"""What every section of the main job shares: the section names, the scales, the context a
section runs in and the result it returns. Read by the package's runner, the sections and the
page (:mod:`.document`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..experiments import EXPERIMENTS

# the experiments' sections, by section name
EXPERIMENT_SECTIONS = {e.section: e for e in EXPERIMENTS.values() if e.section}

SECTIONS: list[str] = [
    "core",
    "theory",
    "analysis",
    *EXPERIMENT_SECTIONS,
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


def training_scale(ctx: Context) -> tuple[str, tuple[int, ...]]:
    """The training scale and seeds of the sections that train models (lm, reorder).

    quick: the smoke scale, 2 seeds. full: the full scale, 3 seeds, sized for one GPU; on a CPU
    the full grids would take hours (a full-scale language model takes minutes per step on 2
    cores), so there full means the CPU-sized quick scale with 3 seeds, and the section's table
    says which scale ran.
    """
    if ctx.quick:
        return "smoke", (0, 1)
    return ("full" if ctx.device.type == "cuda" else "quick"), (0, 1, 2)


@dataclass
class SectionResult:
    """markdown: the section's text; summary: JSON-able numbers for report.json;
    checks: tokendyn.report.Check verdicts; figures: tokendyn.report.Figure files
    (paths relative to the output directory) not already shown in the markdown."""

    markdown: str
    summary: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)
    figures: list = field(default_factory=list)
