"""``tokendyn simulate``: predicted and simulated regime of the continuous-time token system."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from .options import Backend, Json, Progress
from .root import app

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
    from ..dynamics import simulation as simulation_
    from ..dynamics.sources import SimulationSource
    from ..ops import resolve_backend
    from ..outputs import check_image_file, check_output_file

    if plot is not None:
        check_image_file(plot, "--plot")
    if json_path is not None:
        check_output_file(json_path, "--json")
    resolve_backend(backend, "cpu")   # the system is integrated on the CPU: refuse a backend that cannot run there
    source = SimulationSource(mu=mu, s_delta=s_delta, a=a, b_delta=b_delta, params=params, random=random,
                              dim=dim, state=state, seed=seed, x0=x0, tokens=tokens)
    request = dict(t_end=t_end, points=points, tokens=tokens, method=method, memory_limit=memory_limit * 2**30,
                   max_evals=simulation_.DEFAULT_MAX_EVALS if max_evals is None else max_evals,
                   time_limit=simulation_.DEFAULT_TIME_LIMIT if time_limit is None else time_limit)
    simulation_.check_request(**request, dim=dim, state=state)
    system = source.system()
    init = source.initial_tokens(system, check=lambda n, d, st: simulation_.check_request(
        **{**request, "tokens": n}, dim=d, state=st))

    determined, solver_failed = _run(system, init, request, backend, progress, show_all, plot, json_path)
    budget_given = max_evals is not None or time_limit is not None
    if not determined and (solver_failed or not budget_given):   # a user's budget may stop a run undecided
        raise typer.Exit(simulation_.EXIT_UNDETERMINED)


def _run(system, init, request: dict, backend: str, progress: bool, show_all: bool, plot: Path | None,
         json_path: Path | None) -> tuple[bool, bool]:
    """Simulate, print the regimes and the token table, write --plot and --json. Returns whether
    the regime was determined and whether the solver failed."""
    from rich.console import Console

    from ..dynamics import simulation as simulation_

    update, close = _progress_bar(progress)
    try:
        done = simulation_.simulate_and_report(system, init, request["t_end"], points=request["points"],
                                               method=request["method"], backend=backend,
                                               max_evals=request["max_evals"], time_limit=request["time_limit"],
                                               memory_limit=request["memory_limit"], progress=update)
    finally:
        close()
    report, sim, prediction, measured = done.report, done.simulation, done.prediction, done.measured
    console = Console()
    _print_result(console, report, sim, prediction, measured, show_all)
    _write_outputs(sim, report, measured, prediction, plot, json_path, console)
    return measured.determined, sim.info["solver_failure"] is not None


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
