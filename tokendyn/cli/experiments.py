"""``tokendyn train EXPERIMENT``: one command per experiment of :mod:`tokendyn.experiments`, made
from its description (:func:`grid_command`): --out, --scale, --settings, --seeds, --device,
--progress, --cuda-graph, and the description's data options (:data:`tokendyn.cli.options.DATA`)."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer

from ..errors import ConfigError
from ..train.experiment import Experiment, choose_seeds
from ..train.seeds import RESOLVE_CAP
from . import options as opt
from .root import echo as _echo
from .root import invocation


def grid_choices(exp: Experiment, settings, seeds: str, scale: str) -> tuple[list[str], list[int]]:
    """The settings (repeatable or comma-separated) and seeds (comma-separated) of a grid command,
    checked against ``exp`` together with the scale, before any work."""
    names = exp.choose_settings([s.strip() for v in settings or () for s in v.split(",") if s.strip()])
    exp.scale(scale)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {seeds!r}.") from None
    return names, choose_seeds(seed_list)


def _parameters(exp: Experiment) -> list[inspect.Parameter]:
    scales = ", ".join(exp.scales)
    common = [
        ("out", opt.option(Path, "--out", help=f"Directory for runs/ and the {exp.stem}.* files; complete runs found "
                           "there are skipped, incomplete ones resumed."), Path(f"{exp.name}-out")),
        ("scale", opt.option(str, "--scale", help=f"One of {scales} (smoke: seconds per run on a CPU; quick: a CPU; "
                             "full: one GPU)."), "quick" if "quick" in exp.scales else next(iter(exp.scales))),
        ("settings", opt.option(list[str] | None, "--settings", help="Settings to run (repeatable or comma-separated; "
                                f"of {', '.join(exp.settings)}; default: {', '.join(exp.default_settings)})."), None),
        ("seeds", opt.option(str, "--seeds", help="Comma-separated seeds."), ",".join(map(str, exp.default_seeds))),
        ("device", opt.Device, "auto"),
        ("progress", opt.Progress, True),
        ("cuda_graph", opt.CudaGraph, False),
        ("summarise_only", opt.option(bool, "--summarise-only", help="Train nothing: write the summary of the "
                                      "complete runs in --out (e.g. after copying the runs/* of several result "
                                      "folders into one)."), False),
        ("plan_seeds", opt.option(int, "--plan-seeds", help="After the summary, print the runs (SETTING-seedK) that "
                                  "would take each comparison within its spreads to the seeds per setting that "
                                  "would resolve a difference of its size, where that is at most this many "
                                  "(0: off); they are scripts/grid_gpu.sh's RUN arguments."), 0),
    ]
    data = [(name, opt.DATA[name][0], opt.DATA[name][1]) for name in exp.options]
    return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=default)
            for name, kind, default in common + data]


def _print_written(exp: Experiment, out: Path, doc: dict, plan_seeds: int = 0) -> None:
    typer.echo((out / f"{exp.stem}.md").read_text())
    written = [str(out / f) for f in exp.result_files if (out / f).is_file()]
    typer.echo(f"written: {', '.join(written)} ({len(doc['settings'])} settings)")
    if plan_seeds:
        runs, beyond = exp.runs_to_resolve(doc, plan_seeds)
        typer.echo(f"runs that would resolve the comparisons within their spreads (at most {plan_seeds} seeds per "
                   f"setting): {' '.join(runs) if runs else 'none'}")
        if beyond:
            typer.echo(f"beyond {plan_seeds} seeds per setting: {', '.join(beyond)}")


def grid_command(exp: Experiment):
    """The command function of ``exp``'s grid (for ``typer.Typer.command``): train every
    (setting, seed) not yet complete in --out, write the summary, print its table."""

    def command(**values) -> None:
        from ..outputs import check_output_dir
        from ..provenance import provenance
        from ..train.grid import run_grid
        from ..train.loop import check_cuda_graph, training_device

        out = check_output_dir(values["out"], "--out")    # before any data is read or model built
        record = provenance(invocation(f"train {exp.name}"))
        names, seeds = grid_choices(exp, values["settings"], values["seeds"], values["scale"])
        if not 0 <= values["plan_seeds"] <= RESOLVE_CAP:
            raise ConfigError(f"--plan-seeds must be 0 (off) or a number of seeds up to {RESOLVE_CAP}, got "
                              f"{values['plan_seeds']}.")
        if values["summarise_only"]:
            from ..train.summary import summarise

            if not (out / "runs").is_dir():
                raise ConfigError(f"{out} holds no runs/ folder to summarise.")
            doc = summarise(exp, out, values["scale"], provenance=record, log=_echo)
            _print_written(exp, out, doc, values["plan_seeds"])
            return
        device = training_device(values["device"])
        if values["cuda_graph"]:
            check_cuda_graph(device)
        data = {}
        for name in exp.options:
            resolve = opt.DATA[name][2]
            data[name] = resolve(values[name]) if resolve is not None else values[name]
        doc = run_grid(exp, out, scale=values["scale"], settings=names, seeds=seeds, device=device, options=data,
                       progress=values["progress"], log=_echo, provenance=record, cuda_graph=values["cuda_graph"])
        _print_written(exp, out, doc, values["plan_seeds"])

    params = _parameters(exp)
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = exp.help
    command.__name__ = exp.name.replace("-", "_")
    return command


def register(app: typer.Typer, experiments) -> None:
    """Add one command per experiment to ``app`` (the ``train`` group)."""
    for exp in experiments:
        app.command(exp.name, help=exp.help)(grid_command(exp))
