"""The root of the ``tokendyn`` command: the typer :data:`app` every subcommand module registers
on, and the command line being run (for provenance records). :func:`tokendyn.cli.main` runs it.
"""

from __future__ import annotations

import shlex

import typer

# the arguments main() was called with (None when a command runs without main, e.g. in tests)
ARGS: list[str] | None = None

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


def invocation(command: str) -> str:
    """The command line being run, for provenance records (``tokendyn COMMAND`` when unknown)."""
    if not ARGS:
        return f"tokendyn {command}"
    return "tokendyn " + " ".join(shlex.quote(a) for a in ARGS)


def echo(line: str) -> None:
    """A progress or result line of a command, on stderr."""
    typer.echo(line, err=True)
