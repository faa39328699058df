"""``tokendyn export CKPT --layout hf|state-spaces --out DIR``: a checkpoint written in another
library's layout (:func:`tokendyn.model.checkpoint.export_hf`,
:func:`~tokendyn.model.checkpoint.export_state_spaces`), with its tokenizer when it has one."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from ..errors import ConfigError, DataError
from .root import app

LAYOUTS = ("hf", "state-spaces")


@app.command()
def export(
    path: Path = typer.Argument(..., help="Checkpoint directory (any layout tokendyn reads)."),
    layout: str = typer.Option(..., "--layout", help="hf (transformers' MambaForCausalLM) or state-spaces "
                               "(mamba_ssm's MambaLMHeadModel)."),
    out: Path = typer.Option(..., "--out", help="New (or empty) directory for the exported checkpoint."),
    force: bool = typer.Option(False, "--force", help="Write into a --out that already holds files (those of the "
                               "export are replaced, others left alone)."),
) -> None:
    """Write a language-model checkpoint in transformers' or mamba_ssm's layout (a variant is \
written as the plain Mamba-1 model that computes the same logits)."""
    from ..model.checkpoint import export_hf, export_state_spaces, load_model
    from ..outputs import check_output_dir, staged_outputs

    if layout not in LAYOUTS:
        raise ConfigError(f"unknown --layout {layout!r}; choose {' or '.join(LAYOUTS)}.")
    check_output_dir(out, "--out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise DataError(f"--out {out} already holds files; choose a new directory or pass --force.")
    model = load_model(path)
    writer = export_hf if layout == "hf" else export_state_spaces
    with staged_outputs() as staging:
        staged = staging.dir(out)
        writer(model, staged)
        tokenizer = Path(model.checkpoint_path) / "tokenizer.json"
        if tokenizer.is_file():
            shutil.copyfile(tokenizer, staged / "tokenizer.json")
    typer.echo(f"{model.checkpoint_layout} checkpoint {model.checkpoint_path} written in the {layout} layout to {out}")
