"""One simulation, as ``tokendyn simulate`` and the Python API report it (docs/regimes.md).

:func:`check_request` refuses a request before anything large is allocated;
:func:`simulate_and_report` predicts, simulates, measures and returns the JSON document
(:func:`build_report`), so the CLI and Python callers get the same report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .integrate import (
    DEFAULT_MEMORY_LIMIT,
    METHODS,
    Simulation,
    gib,
    simulate,
    trajectory_bytes,
)
from .regimes import (
    RegimePrediction,
    TrajectoryRegime,
    classify_trajectory,
    predict_regime,
)
from .spectrum import eigen_signature
from .vector_field import TokenSystem

# Sized so that a default run ends within a minute on 2 CPU cores (docs/regimes.md).
DEFAULT_MAX_EVALS = 200_000
DEFAULT_TIME_LIMIT = 45.0            # seconds of wall clock
# Exit status of ``tokendyn simulate`` when the regime is undetermined (see docs/regimes.md).
EXIT_UNDETERMINED = 3


def parameter_bytes(dim: int, state: int) -> int:
    """Memory of the parameters S_B, S_C, S_Δ, b_Δ, A in float64."""
    return 8 * (3 * state * dim + dim * dim + dim)


def check_request(*, t_end: float, points: int, tokens: int | None = None, dim: int | None = None,
                  state: int | None = None, max_evals: int | None = None, time_limit: float | None = None,
                  memory_limit: float = DEFAULT_MEMORY_LIMIT, method: str = "auto") -> None:
    """Refuse, with one sentence (ConfigError), a request that is malformed or whose arrays
    would exceed ``memory_limit`` bytes, before anything is allocated. ``dim``/``state``
    size the parameters (and the trajectory with ``tokens``)."""
    if method not in METHODS:
        raise ConfigError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}.")
    if not (t_end > 0 and math.isfinite(t_end)):
        raise ConfigError(f"--t-end must be a positive finite time, got {t_end}.")
    if points < 3:
        raise ConfigError(f"--points must be at least 3, got {points}.")
    if tokens is not None and tokens < 1:
        raise ConfigError(f"--tokens must be at least 1, got {tokens}.")
    for flag, v in (("--max-evals", max_evals), ("--time-limit", time_limit), ("--memory-limit", memory_limit)):
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise ConfigError(f"{flag} must be a positive number, got {v:g}.")
    for flag, v in (("--dim", dim), ("--state", state)):
        if v is not None and v < 1:
            raise ConfigError(f"{flag} must be at least 1, got {v}.")
    if dim is not None and state is not None:
        need = parameter_bytes(dim, state)
        if need > memory_limit:
            raise ConfigError(f"parameters for D={dim:,}, N={state:,} would take {gib(need)}, "
                              f"above the memory limit of {gib(memory_limit)} (--memory-limit).")
        need = trajectory_bytes(1, tokens or 1, dim, state, points)
        if need > memory_limit:
            raise ConfigError(f"the trajectory of {tokens or 1:,} tokens of dimension {dim:,} at {points:,} "
                              f"points would take {gib(need)}, above the memory limit of "
                              f"{gib(memory_limit)} (--memory-limit).")


def token_status(sim: Simulation, l: int, index: int = 0) -> str:
    """``blew_up`` (the token met a blow-up test), ``stopped`` (its trajectory ended with another
    token's blow-up, without meeting a test itself) or ``ran_on`` (it was integrated to the end)."""
    if bool(sim.blew_up[index, l]):
        return "blew_up"
    return "stopped" if math.isfinite(float(sim.blowup_times[index, l])) else "ran_on"


def build_report(system: TokenSystem, sim: Simulation, prediction: RegimePrediction,
                 measured: TrajectoryRegime, x0: torch.Tensor) -> dict:
    """The JSON document of one simulation, batch element 0 (fields in docs/regimes.md).
    x0: (L, D)."""
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
        "regime": measured.regime,
        "undetermined_reason": measured.reason,
        "predicted_regime": prediction.regime,
        "simulated_regime": measured.regime,
        "prediction_rule": prediction.rule,
        "blowup_times": [float(v) if bool(hit) else None for v, hit in zip(sim.blowup_times[0], sim.blew_up[0])],
        "stopped_times": [float(v) if bool(hit) else None for v, hit in zip(sim.blowup_times[0], sim.stopped[0])],
        "token_status": [token_status(sim, l) for l in range(sim.blowup_times.shape[1])],
        "blowup_bounds": prediction.effective_blowup_bounds,
        "token_blowup_bounds": prediction.blowup_bounds,
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
        "stop_reason": sim.info["stop_reason"],
        "solver_failure": sim.info["solver_failure"],
        "stiff_fallback_from": sim.info["stiff_fallback_from"],
        "stiff_refused": sim.info["stiff_refused"],
        "method": sim.method,
        "n_evals": sim.n_evals,
        "wall_s": sim.info["wall_s"],
        "t": sim.t.tolist(),
        "trajectories": traj,
    }


@dataclass
class SimulationReport:
    """What one request produced: the JSON document and the objects it was built from."""

    report: dict
    simulation: Simulation
    prediction: RegimePrediction
    measured: TrajectoryRegime


def simulate_and_report(system: TokenSystem, x0, t_end: float = 100.0, *, points: int = 200,
                        method: str = "auto", backend: str = "auto",
                        max_evals: int | None = DEFAULT_MAX_EVALS, time_limit: float | None = DEFAULT_TIME_LIMIT,
                        memory_limit: float = DEFAULT_MEMORY_LIMIT, progress=None) -> SimulationReport:
    """Predict, simulate and measure one set of initial tokens x0: (L, D), or (L,) when D = 1."""
    x0 = torch.as_tensor(x0, dtype=torch.float64)
    if x0.dim() == 1:
        x0 = x0[:, None]
    check_request(t_end=t_end, points=points, tokens=x0.shape[0], dim=system.dim, state=system.state,
                  max_evals=max_evals, time_limit=time_limit, memory_limit=memory_limit, method=method)
    prediction = predict_regime(system, x0)
    sim = simulate(system, x0, t_end, n_points=points, method=method, backend=backend, max_evals=max_evals,
                   time_limit=time_limit, memory_limit=memory_limit, progress=progress)
    measured = classify_trajectory(sim)
    return SimulationReport(build_report(system, sim, prediction, measured, x0), sim, prediction, measured)
