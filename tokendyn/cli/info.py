"""``tokendyn info PATH``: which checkpoint layout a directory holds, its config and size."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .options import Json
from .root import app


@app.command()
def info(
    path: Path = typer.Argument(..., help="Checkpoint directory (tokendyn, state-spaces or HF-transformers layout)."),
    json_out: Json = None,
) -> None:
    """Check a checkpoint and print its layout, configuration and parameter count."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ..model.checkpoint import inspect_checkpoint
    from ..outputs import check_output_file, staged_outputs

    if json_out is not None:
        check_output_file(json_out, "--json")
    found = inspect_checkpoint(path)
    data = found.to_json()

    console = Console()
    console.print(f"[bold]{escape(found.path)}[/bold]")
    console.print(f"layout: [bold]{found.layout}[/bold]")
    console.print(f"kind: {found.kind}")
    family = found.config.family
    console.print(f"mixer family: {family.name} ({escape(family.title)})")
    console.print(f"variants in use: {', '.join(data['variants']) or 'none'}")
    console.print(f"parameters: {found.n_params:,}")
    console.print(f"files: {escape(', '.join(found.files))}")
    table = Table(title="config", show_header=True)
    table.add_column("field")
    table.add_column("value")
    table.add_column("of")
    config = data["config"]
    for key, value in config.items():
        if key not in ("mixer", "variants"):
            table.add_row(key, escape(str(value)), "model")
    for key, value in config["mixer"].items():
        table.add_row(key, escape(str(value)), f"layer {family.name}")
    for name, settings in config["variants"].items():
        for key, value in settings.items():
            table.add_row(key, escape(str(value)), f"variant {name}")
    console.print(table)

    if json_out is not None:
        with staged_outputs() as staging:
            staging.file(json_out).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
