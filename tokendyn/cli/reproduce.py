"""``tokendyn reproduce``: run every section of the main job and write a report."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app


@app.command()
def reproduce(
    out: Path = typer.Option(Path("reproduce-out"), "--out", help="Directory for the report, figures and JSON."),
    scale: str = typer.Option("quick", "--scale", help="quick (minutes on a CPU) or full."),
    only: list[str] = typer.Option([], "--only", help="Run only these sections (repeatable)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
) -> None:
    """Run the main job: every capability on the built-in data, with a report (report.md, report.json)."""
    from ..reproduce import run_all

    run_all(out=out, scale=scale, only=only, device=device)
