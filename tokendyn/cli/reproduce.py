"""``tokendyn reproduce``: run every section of the main job and write a report."""

from __future__ import annotations

from pathlib import Path

import typer

from .options import Device
from .root import app

# Exit status of --strict when a check fails; 2 stays reserved for errors a user can cause.
STRICT_FAILURE = 1


@app.command()
def reproduce(
    out: Path = typer.Option(Path("reproduce-out"), "--out", help="Directory for the report, figures and JSON."),
    scale: str = typer.Option("quick", "--scale", help="quick (minutes on a CPU) or full."),
    only: list[str] = typer.Option([], "--only", help="Run only these sections (repeatable)."),
    device: Device = "auto",
    strict: bool = typer.Option(False, "--strict", help=f"Exit with status {STRICT_FAILURE} when a check fails."),
    force: bool = typer.Option(False, "--force", help="Replace report files in --out that tokendyn did not write "
                               "(and a report of another scale)."),
    rerender: bool = typer.Option(False, "--rerender", help="Run nothing: write index.html, report.md and "
                                  "report.json of the earlier run in --out again from its report.json."),
) -> None:
    """Run the main job: every capability on the built-in data, with a report (index.html, report.md,
    report.json) that opens with its checks (claim, tolerance, measured, outcome)."""
    from ..reproduce import rerender as rerender_run
    from ..reproduce import run_all

    if rerender:
        report = rerender_run(out)
        typer.echo(f"report written to {out / 'index.html'}, {out / 'report.md'} and {out / 'report.json'}")
    else:
        report = run_all(out=out, scale=scale, only=only, device=device, force=force)
    failed = report["outcomes"]["fail"]
    if strict and failed:
        from ..report import count_failures

        f = count_failures(report["checks"])
        typer.echo(f"tokendyn: {failed} check(s) failed (--strict): {f['software failure']} software failure(s), "
                   f"{f['finding']} finding(s); see the checks table in {out / 'index.html'}.", err=True)
        raise typer.Exit(STRICT_FAILURE)
