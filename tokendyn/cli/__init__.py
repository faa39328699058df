"""The ``tokendyn`` command. Each subcommand lives in its own module and registers
itself on :data:`app`; :func:`main` turns user errors into one line and exit 2."""

from __future__ import annotations

import sys

import typer

from ..errors import TokendynError

app = typer.Typer(
    name="tokendyn",
    help="Token dynamics of deep selective state space models (Mamba).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback(invoke_without_command=True)
def _root(ctx: typer.Context,
          version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    """Token dynamics of deep selective state space models (Mamba)."""
    if version:
        from .. import __version__

        typer.echo(__version__)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(2)


# Subcommand modules: importing one registers its command on `app`.
from . import reproduce as _reproduce  # noqa: E402,F401
from . import info as _info  # noqa: E402,F401
from . import analyze as _analyze  # noqa: E402,F401
from . import simulate as _simulate  # noqa: E402,F401
from . import train as _train  # noqa: E402,F401
from . import train_image as _train_image  # noqa: E402,F401


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    try:
        app(args=argv, prog_name="tokendyn")
    except TokendynError as exc:
        print(f"tokendyn: error: {exc}", file=sys.stderr)
        sys.exit(2)
