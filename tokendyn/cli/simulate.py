"""``tokendyn simulate``: predicted and simulated regime of the continuous-time token system."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError, DataError
from . import app


def _parse_x0(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise DataError(f"--x0 must be comma-separated numbers, got {text!r}.") from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise DataError(f"--x0 must hold at least one finite number, got {text!r}.")
    return vals


def _load_params(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"cannot read the parameter file {path}: {exc.strerror or exc}.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"the parameter file {path} is not valid JSON ({exc.msg} at line {exc.lineno}).") from None


def _nullable(v: float):
    return v if math.isfinite(v) else None


def build_report(system, sim, prediction, measured, x0) -> dict:
    """The JSON document of one simulation (field names documented in docs/regimes.md)."""
    import torch

    from ..dynamics import eigen_signature

    sig = eigen_signature(system.S_B, system.S_C).as_dict()
    valid = sim.valid[:, 0]                                   # (T, L)
    traj = sim.x[:, 0].tolist()                               # (T, L, D)
    for ti in range(valid.shape[0]):
        for l in range(valid.shape[1]):
            if not bool(valid[ti, l]):
                traj[ti][l] = None                            # the token no longer exists
    last = [int(torch.nonzero(valid[:, l]).max()) for l in range(valid.shape[1])]
    final = [float(sim.norms[last[l], 0, l]) for l in range(len(last))]
    return {
        "predicted_regime": prediction.regime,
        "simulated_regime": measured.regime,
        "prediction_rule": prediction.rule,
        "blowup_times": [_nullable(float(v)) for v in sim.blowup_times[0]],
        "blowup_bounds": prediction.blowup_bounds,
        "convergence_constants": prediction.convergence_constants,
        "final_norms": final,
        "final_norm_times": [float(sim.t[i]) for i in last],
        "fitted_rates": measured.fitted_rates(),
        "relative_change": measured.relative_change,
        "eigen_signature": {k: sig[k] for k in ("positive", "negative", "zero")},
        "eigenvalue_range": [sig["smallest"], sig["largest"]],
        "parameters": system.as_dict(),
        "x0": x0.tolist(),
        "t_end": sim.t_end,
        "truncated_at": sim.info["truncated_at"],
        "solver_failure": sim.info["solver_failure"],
        "stiff_fallback_from": sim.info["stiff_fallback_from"],
        "method": sim.method,
        "n_evals": sim.n_evals,
        "t": sim.t.tolist(),
        "trajectories": traj,
    }


@app.command()
def simulate(
    mu: Optional[float] = typer.Option(None, "--mu", help="1-D system: μ = S_Cᵀ S_B."),
    s_delta: Optional[float] = typer.Option(None, "--s-delta", help="1-D system: S_Δ."),
    a: Optional[float] = typer.Option(None, "--a", help="1-D system: decay a > 0."),
    b_delta: float = typer.Option(0.0, "--b-delta", help="1-D system: bias b_Δ."),
    params: Optional[Path] = typer.Option(None, "--params", help="JSON file with S_B, S_C, S_Delta, b_Delta, a or A."),
    random: bool = typer.Option(False, "--random", help="Random parameters (needs --dim, --state)."),
    dim: Optional[int] = typer.Option(None, "--dim", help="D for --random."),
    state: Optional[int] = typer.Option(None, "--state", help="N for --random."),
    seed: int = typer.Option(0, "--seed", help="Seed for random parameters and tokens."),
    x0: Optional[str] = typer.Option(None, "--x0", help="1-D initial tokens, e.g. \"1,-0.5,0.3\"."),
    tokens: Optional[int] = typer.Option(None, "--tokens", help="Number L of random initial tokens (N(0,1))."),
    t_end: float = typer.Option(100.0, "--t-end", help="End time (depth) of the integration."),
    method: str = typer.Option("dopri5", "--method", help="torchdiffeq method (dopri5, dopri8, bosh3, ...)."),
    points: int = typer.Option(200, "--points", help="Output grid points (log-spaced)."),
    backend: str = typer.Option("auto", "--backend", help="Scan backend for the vector field."),
    max_evals: Optional[int] = typer.Option(None, "--max-evals", help="Stop after this many field evaluations."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a figure here (.png, .pdf, .svg, ...)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON here."),
) -> None:
    """Simulate the continuous-time token dynamics and report predicted vs simulated regime."""
    from ..outputs import check_image_file, check_output_file, staged_outputs

    if plot is not None:
        check_image_file(plot, "--plot")
    if json_path is not None:
        check_output_file(json_path, "--json")

    import torch

    from ..dynamics import METHODS, TokenSystem, classify_trajectory, predict_regime
    from ..dynamics import simulate as run_simulation

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
    if method not in METHODS:
        raise ConfigError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}.")
    if not (t_end > 0 and math.isfinite(t_end)):
        raise ConfigError(f"--t-end must be a positive finite time, got {t_end}.")
    if tokens is not None and tokens < 1:
        raise ConfigError(f"--tokens must be at least 1, got {tokens}.")

    if any(one_d):
        if a <= 0:
            raise DataError(f"decay --a must be positive, got {a}.")
        system = TokenSystem.one_dim(mu, s_delta, a, b_delta)
    elif params is not None:
        system = TokenSystem.from_params(_load_params(params))
    else:
        if dim is None or state is None:
            raise ConfigError("--random needs --dim D and --state N.")
        system = TokenSystem.random(dim, state, seed)

    if x0 is not None:
        vals = _parse_x0(x0)
        if system.dim != 1:
            raise DataError(f"--x0 gives 1-D tokens but the system has D={system.dim}; use --tokens L.")
        init = torch.tensor(vals, dtype=torch.float64)[:, None]
    else:
        g = torch.Generator().manual_seed(seed + 1)
        init = torch.randn(tokens or 8, system.dim, generator=g, dtype=torch.float64)

    prediction = predict_regime(system, init)
    sim = run_simulation(system, init, t_end, n_points=points, method=method, backend=backend,
                         max_evals=max_evals)
    measured = classify_trajectory(sim)
    report = build_report(system, sim, prediction, measured, init)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"predicted regime: [bold]{prediction.regime}[/bold] ({prediction.rule})")
    console.print(f"simulated regime: [bold]{measured.regime}[/bold] (t_end={sim.t_end:g}, {method})")
    if sim.info["truncated_at"] is not None:
        why = sim.info["solver_failure"] or "evaluation budget spent"
        console.print(f"[yellow]{why}: simulated only to t={sim.t_end:g}[/yellow]")
    sig = report["eigen_signature"]
    console.print(f"eigen-signature of M_s: {sig['positive']} positive, {sig['negative']} negative, {sig['zero']} zero")
    table = Table("token", "|x(0)|", "final |x|", "blow-up t", "bound", "log-log slope", "growth exp.")
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    for l in range(init.shape[0]):
        bounds = prediction.effective_blowup_bounds
        table.add_row(str(l + 1), fmt(float(init[l].norm())), fmt(report["final_norms"][l]),
                      fmt(report["blowup_times"][l]), fmt(bounds[l] if bounds else None),
                      fmt(measured.loglog_slope[l]), fmt(measured.growth_exponent[l]))
    console.print(table)
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
