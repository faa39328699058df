"""``tokendyn analyze``: per-layer spectra, token-norm dynamics and hidden attention of a checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import DataError
from .options import Device
from .root import app, invocation


def parse_indices(values: list[str], what: str) -> list[int]:
    """``["0,3", "-1"]`` -> ``[0, 3, -1]`` (repeatable and comma-separated forms both work)."""
    out = []
    for v in values:
        for part in v.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(int(part))
            except ValueError:
                raise DataError(f"{what} must be integers, got {part!r}.") from None
    return out


@app.command()
def analyze(
    path: Path = typer.Argument(
        ..., help="Checkpoint directory (tokendyn, state-spaces or HF-transformers layout)."),
    text: Path = typer.Option(
        None, "--text", help="UTF-8 text file to run through the model "
        "(default: the built-in King James Bible if a tokenizer is found, else random ids)."),
    tokenizer: Path = typer.Option(
        None, "--tokenizer", help="tokenizer.json to use instead of the one beside the checkpoint."),
    max_tokens: int = typer.Option(
        1024, "--max-tokens", help="Number of tokens analysed (refused when the analysis would not fit in "
        "free memory); longer --text is an error unless --truncate."),
    truncate: bool = typer.Option(
        False, "--truncate", help="Analyse the first --max-tokens tokens of a longer --text."),
    layers: list[str] = typer.Option(
        [], "--layers", help="Layers for hidden attention, e.g. 0,5,-1 (default: first, middle, last)."),
    channels: list[str] = typer.Option(
        [], "--channels", help="Channels d for hidden attention (default: 0 and the channel with the largest mean Δ)."),
    out: Path = typer.Option(
        Path("analysis-out"), "--out", help="Directory for report.html, the PNGs and analysis.json."),
    json_path: Path = typer.Option(None, "--json", help="Where to write the JSON (default: OUT/analysis.json)."),
    device: Device = "cpu",
    seed: int = typer.Option(0, "--seed", help="Seed of the random token ids used when there is no tokenizer."),
    flow_time: float = typer.Option(
        5.0, "--flow-time", help="Stated time of the idealised flow run on each layer's parameters from its "
        "real tokens (its norm ratio is reported there); 0 leaves the flow out."),
    flow_tokens: int = typer.Option(
        256, "--flow-tokens", help="The flow runs from this many first tokens (exact for them: the flow is causal)."),
) -> None:
    """Analyse a checkpoint: spectrum of S_Cᵀ S_B per layer, predicted regimes, measured token norms,
    hidden attention."""
    from ..analysis.analyze import analyze_checkpoint, write_analysis
    from ..outputs import check_output_dir, check_output_file, staged_outputs
    from ..provenance import provenance
    from ..resources import resolve_device

    # everything a user can get wrong is checked before the model is loaded
    device = resolve_device(device)
    check_output_dir(out, "--out")
    if json_path is not None:
        check_output_file(json_path, "--json")
    layer_list = parse_indices(layers, "--layers") or None
    channel_list = parse_indices(channels, "--channels") or None
    result = analyze_checkpoint(path, text=text, tokenizer=tokenizer, max_tokens=max_tokens, truncate=truncate,
                                layers=layer_list, channels=channel_list, device=device, seed=seed,
                                flow_time=flow_time, flow_tokens=flow_tokens)
    with staged_outputs() as staging:
        staged_out = staging.dir(out)
        staged_json = staging.path(json_path) if json_path is not None else None
        write_analysis(result, staged_out, staged_json, provenance(invocation("analyze")))
    json_final = json_path if json_path is not None else out / "analysis.json"
    _print_summary(result, {"html": out / "report.html", "json": json_final})


def _print_summary(result, paths: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{result.checkpoint} ({result.layout} layout): {result.input.description}")
    from ..analysis.render import flow_cell

    for col in ("layer", "M_s >0", "M_s <0", "M_s =0", "regime", "radial velocity", "idealised flow"):
        table.add_column(col, justify="right")
    for s, th in zip(result.spectra, result.theory):
        flow = flow_cell(th.flow.as_dict() if th.flow is not None else None)
        table.add_row(str(s.index), str(s.positive), str(s.negative), str(s.zero),
                      s.predicted_regime, f"{float(th.radial_velocity.median()):+.3g}", flow)
    console.print(table)
    console.print(f"report: {paths['html']}\njson:   {paths['json']}")
