"""``tokendyn simulate``: predicted and simulated regime of the continuous-time token system."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from ..errors import ConfigError, DataError
from .options import Backend, Json, Progress
from .root import app


def _parse_x0(text: str) -> list[float]:
    parts = text.replace(" ", "").split(",")
    if parts == [""]:
        raise DataError("--x0 must hold at least one number, got an empty list.")
    if "" in parts:       # "1,,2" is a typo, never a silent [1, 2]
        raise DataError(f"--x0 has an empty entry at position {parts.index('') + 1}: {text!r}.")
    try:
        vals = [float(v) for v in parts]
    except ValueError:
        raise DataError(f"--x0 must be comma-separated numbers, got {text!r}.") from None
    bad = [i + 1 for i, v in enumerate(vals) if not math.isfinite(v)]
    if bad:
        raise DataError(f"--x0 must hold finite numbers only; entry {bad[0]} of {text!r} is {parts[bad[0] - 1]}.")
    return vals


def _load_params(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"the parameter file {path} is not a text (JSON) file.") from None
    except OSError as exc:
        raise DataError(f"cannot read the parameter file {path}: {exc.strerror or exc}.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"the parameter file {path} is not valid JSON ({exc.msg} at line {exc.lineno}).") from None


# Rows of the console table shown without --show-all: the first and the last tokens.
_HEAD_ROWS, _TAIL_ROWS = 10, 5


def _console_table(report: dict, prediction, show_all: bool):
    from rich.table import Column, Table

    table = Table("token", "|x(0)|", "final |x|", Column("ended at t", no_wrap=True), "bound", "log-log slope",
                  "growth exp.")

    def fmt(v):
        return "-" if v is None else f"{v:.4g}"

    def ended(l):   # a token that blew up, or one stopped with a blow-up
        if report["blowup_times"][l] is not None:
            return f"{report['blowup_times'][l]:.4g} blew up"
        if report["stopped_times"][l] is not None:
            return f"{report['stopped_times'][l]:.4g} stopped"
        return "-"

    L = len(report["x0"])
    rows = range(L) if show_all or L <= _HEAD_ROWS + _TAIL_ROWS else \
        [*range(_HEAD_ROWS), None, *range(L - _TAIL_ROWS, L)]
    bounds = report["blowup_bounds"] or [None] * L
    rates = report["fitted_rates"]
    for l in rows:
        if l is None:
            table.add_row(*["…"] * 7)
            continue
        table.add_row(str(l + 1), fmt(math.hypot(*report["x0"][l])), fmt(report["final_norms"][l]),
                      ended(l), fmt(bounds[l]),
                      fmt(rates["loglog_slope"][l]), fmt(rates["growth_exponent"][l]))
    return table


def _summary(report: dict) -> str:
    """One line over all tokens, for long runs."""
    blown = [t for t in report["blowup_times"] if t is not None]
    stopped = sum(t is not None for t in report["stopped_times"])
    norms = report["final_norms"]
    first = f", first at t={min(blown):.4g}" if blown else ""
    with_them = f", {stopped:,} stopped with them" if stopped else ""
    return (f"{len(norms):,} tokens: {len(blown):,} blew up{first}{with_them}; final |x| from {min(norms):.4g} "
            f"to {max(norms):.4g}")


def _progress_bar(show: bool):
    """A tqdm bar on stderr, shown only when ``show`` and stderr is a terminal, and only once a run
    has lasted a second: simulated time reached, evaluations, tokens ended. Returns (callback, close)."""
    import sys
    import time

    from tqdm import tqdm

    bar = tqdm(total=None, file=sys.stderr, delay=1.0, unit=" steps", leave=False, dynamic_ncols=True,
               disable=not (show and sys.stderr.isatty()))
    last = [0.0]

    def update(t: float, n_evals: int, n_blown: int) -> None:
        bar.update(1)
        now = time.perf_counter()
        if now - last[0] > 0.2:
            last[0] = now
            bar.set_postfix_str(f"t={t:.4g}, {n_evals:,} evaluations, {n_blown:,} tokens ended by blow-ups",
                                refresh=False)

    return update, bar.close


@app.command()
def simulate(
    mu: float | None = typer.Option(None, "--mu", help="1-D system: μ = S_Cᵀ S_B."),
    s_delta: float | None = typer.Option(None, "--s-delta", help="1-D system: S_Δ."),
    a: float | None = typer.Option(None, "--a", help="1-D system: decay a > 0."),
    b_delta: float = typer.Option(0.0, "--b-delta", help="1-D system: bias b_Δ."),
    params: Path | None = typer.Option(None, "--params", help="JSON file with S_B, S_C, S_Delta, b_Delta, a or A."),
    random: bool = typer.Option(False, "--random", help="Random parameters (needs --dim, --state)."),
    dim: int | None = typer.Option(None, "--dim", help="D for --random."),
    state: int | None = typer.Option(None, "--state", help="N for --random."),
    seed: int = typer.Option(0, "--seed", help="Seed for random parameters and tokens."),
    x0: str | None = typer.Option(None, "--x0", help="1-D initial tokens, e.g. \"1,-0.5,0.3\"."),
    tokens: int | None = typer.Option(None, "--tokens", help="Number L of random initial tokens (N(0,1))."),
    t_end: float = typer.Option(100.0, "--t-end", help="End time (depth) of the integration."),
    method: str = typer.Option("auto", "--method", help="scipy solver: auto (LSODA, or RK45 when the stiff "
                               "solver's Jacobian exceeds --memory-limit), LSODA, RK45, DOP853, RK23, BDF, Radau."),
    points: int = typer.Option(200, "--points", help="Output grid points (log-spaced)."),
    backend: Backend = "auto",
    max_evals: int | None = typer.Option(None, "--max-evals", help="Stop after this many field evaluations "
                                            "(default 200,000)."),
    time_limit: float | None = typer.Option(None, "--time-limit", help="Stop after this many seconds of wall "
                                               "clock (default 45)."),
    memory_limit: float = typer.Option(2.0, "--memory-limit", help="GiB the run may allocate; beyond it the request, "
                                       "or the stiff solver, is refused."),
    show_all: bool = typer.Option(False, "--show-all", help="Print every token's row (else a summary past 15)."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a figure here (.png, .pdf, .svg, ...)."),
    json_path: Json = None,
    progress: Progress = True,
) -> None:
    """Simulate the continuous-time token dynamics and report predicted vs simulated regime.

    Exit status: 0 when the regime was determined; 3 when it is undetermined (the run was cut
    short without a blow-up, or the solver failed), except for a run stopped by a --max-evals
    or --time-limit the user gave, which exits 0; 2 for a refused request.
    """
    from ..outputs import check_image_file, check_output_file

    if plot is not None:
        check_image_file(plot, "--plot")
    if json_path is not None:
        check_output_file(json_path, "--json")
    from ..ops import resolve_backend

    resolve_backend(backend, "cpu")   # the system is integrated on the CPU: refuse a backend that cannot run there

    from ..dynamics.simulation import (
        DEFAULT_MAX_EVALS,
        DEFAULT_TIME_LIMIT,
        EXIT_UNDETERMINED,
        check_request,
        simulate_and_report,
    )

    one_d = _check_sources(mu, s_delta, a, params, random, dim, state, x0, tokens)
    budget_given = max_evals is not None or time_limit is not None
    max_evals = DEFAULT_MAX_EVALS if max_evals is None else max_evals
    time_limit = DEFAULT_TIME_LIMIT if time_limit is None else time_limit
    limit = memory_limit * 2**30
    request = dict(t_end=t_end, points=points, tokens=tokens, max_evals=max_evals, time_limit=time_limit,
                   memory_limit=limit, method=method)
    check_request(**request, dim=dim if random else None, state=state if random else None)

    system = _build_system(one_d, mu, s_delta, a, b_delta, params, dim, state, seed)
    init = _initial_tokens(system, x0, tokens, seed, request)

    update, close = _progress_bar(progress)
    try:
        done = simulate_and_report(system, init, t_end, points=points, method=method, backend=backend,
                                   max_evals=max_evals, time_limit=time_limit, memory_limit=limit,
                                   progress=update)
    finally:
        close()
    report, sim, prediction, measured = done.report, done.simulation, done.prediction, done.measured

    from rich.console import Console

    console = Console()
    _print_result(console, report, sim, prediction, measured, show_all)
    _write_outputs(sim, report, measured, prediction, plot, json_path, console)
    stopped_by_user_budget = budget_given and sim.info["solver_failure"] is None
    if not measured.determined and not stopped_by_user_budget:
        raise typer.Exit(EXIT_UNDETERMINED)


def _check_sources(mu, s_delta, a, params, random, dim, state, x0, tokens) -> list[bool]:
    """Refuse a command line that names no parameter source, or more than one, or options that
    do not go with it; returns which of --mu, --s-delta, --a were given."""
    one_d = [v is not None for v in (mu, s_delta, a)]
    sources = sum([any(one_d), params is not None, random])
    if sources != 1:
        raise ConfigError("choose exactly one parameter source: --mu/--s-delta/--a, --params FILE or --random.")
    if any(one_d) and not all(one_d):
        raise ConfigError("the 1-D system needs all of --mu, --s-delta and --a.")
    if (dim is not None or state is not None) and not random:
        raise ConfigError("--dim and --state go with --random only.")
    if x0 is not None and tokens is not None:
        raise ConfigError("give --x0 or --tokens, not both.")
    if random and (dim is None or state is None):
        raise ConfigError("--random needs --dim D and --state N.")
    return one_d


def _build_system(one_d: list[bool], mu, s_delta, a, b_delta, params: Path | None, dim, state, seed: int):
    """The TokenSystem of the parameter source :func:`_check_sources` accepted: the 1-D system,
    a --params file or random parameters."""
    from ..dynamics import TokenSystem

    if any(one_d):
        if a <= 0:
            raise DataError(f"decay --a must be positive, got {a}.")
        return TokenSystem.one_dim(mu, s_delta, a, b_delta)
    if params is not None:
        return TokenSystem.from_params(_load_params(params))
    return TokenSystem.random(dim, state, seed)


def _initial_tokens(system, x0: str | None, tokens: int | None, seed: int, request: dict):
    """The initial tokens x0: (L, D) float64, from --x0 (1-D systems) or --tokens L draws of
    N(0, 1) (default 8), the size checked before they are drawn."""
    import torch

    from ..dynamics.simulation import check_request

    if x0 is not None:
        vals = _parse_x0(x0)
        if system.dim != 1:
            raise DataError(f"--x0 gives 1-D tokens but the system has D={system.dim}; use --tokens L.")
        return torch.tensor(vals, dtype=torch.float64)[:, None]
    check_request(**{**request, "tokens": tokens or 8}, dim=system.dim, state=system.state)
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(tokens or 8, system.dim, generator=g, dtype=torch.float64)


def _print_result(console, report: dict, sim, prediction, measured, show_all: bool) -> None:
    """The simulated and predicted regimes, the eigen-signature and the token table."""
    if measured.determined and sim.complete:
        console.print(f"simulated regime: [bold]{measured.regime}[/bold] (t_end={sim.t_end:g}, {sim.method})")
    elif measured.determined:        # cut short, but a blow-up had already decided it
        console.print(f"simulated regime: [bold]{measured.regime}[/bold] (a token blew up; the run then stopped "
                      f"at t={sim.t_end:g}: {sim.info['stop_reason']})")
    else:
        console.print(f"simulated regime: [bold yellow]undetermined[/bold yellow] ({measured.reason})")
    console.print(f"predicted regime: [bold]{prediction.regime}[/bold] ({prediction.rule})")
    if sim.info["stiff_refused"]:
        console.print(f"[yellow]{sim.info['stiff_refused']}; ran {sim.method} instead[/yellow]")
    sig = report["eigen_signature"]
    console.print(f"eigen-signature of M_s: {sig['positive']} positive, {sig['negative']} negative, {sig['zero']} zero")
    if len(report["x0"]) > _HEAD_ROWS + _TAIL_ROWS and not show_all:
        console.print(_summary(report))
    console.print(_console_table(report, prediction, show_all))
    hidden = len(report["x0"]) - _HEAD_ROWS - _TAIL_ROWS
    if hidden > 0 and not show_all:
        console.print(f"{hidden:,} rows not shown (--show-all prints every row)")


def _write_outputs(sim, report: dict, measured, prediction, plot: Path | None, json_path: Path | None,
                   console) -> None:
    """--plot and --json, written together (staged, moved into place when both are complete)."""
    from ..outputs import staged_outputs

    with staged_outputs() as staging:
        if plot is not None:
            from ..dynamics.plots import save_simulation_plot

            save_simulation_plot(sim, staging.file(plot), title=f"{measured.regime} (predicted {prediction.regime})")
        if json_path is not None:
            staging.file(json_path).write_text(json.dumps(report))
    if plot is not None:
        console.print(f"figure written to {plot}")
    if json_path is not None:
        console.print(f"results written to {json_path}")
