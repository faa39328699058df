"""Integration of the token system with finite-time blow-up detection.

The ODE is solved with torchdiffeq (adaptive by default) segment by segment over a
log-spaced output grid. Each segment is one ``odeint_event`` call whose event is
"the segment's end is reached" or "some live token is blowing up". A token counts
as blowing up when

- its norm exceeds ``blowup_norm``, or
- it grows with an e-folding time |x| / (d|x|/dt) below ``blowup_rtol · t``.

The second test is scale-free: near a singularity |x| ~ (T − t)^(−1/3) (THEORY.md
section 3) the e-folding time is 3(T − t), so the recorded time is within
blowup_rtol·t/3 of the true blow-up, while slow growth (e-folding ~ t·ln t) and decay
never trigger it. It also stops well before float64 can no longer resolve T − t.

The system is causal (dx_l/dt depends on x_1..x_l only), so when token k blows up
the tokens before it keep a well-defined solution and are integrated further; token
k and every token after it (whose vector field contains x_k) have no solution past
that time: they are frozen and all get that blow-up time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torchdiffeq import odeint, odeint_event

from ..errors import ConfigError, DataError
from .vector_field import TokenSystem, vector_field

METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")


class _EvalBudget(Exception):
    """Raised inside the vector field when ``max_evals`` is spent."""


class _SolverFailure(Exception):
    """The stiff fallback solver gave up (e.g. step size underflow near a singularity)."""


@dataclass
class Simulation:
    """Result of :func:`simulate`.

    t: (T,) output times (float64), t[0] = 0; x: (T, batch, L, D) tokens;
    valid: (T, batch, L) True where the token still exists (before its blow-up);
    blowup_times: (batch, L) float64, ``inf`` where the token did not blow up by t_end;
    blowup_states: (batch, L, D) the token when its blow-up was detected (x(0) where none).
    Entries of x where ``valid`` is False hold the last grid value before blow-up.
    """

    t: torch.Tensor
    x: torch.Tensor
    valid: torch.Tensor
    blowup_times: torch.Tensor
    blowup_states: torch.Tensor
    system: TokenSystem
    t_end: float
    method: str
    n_evals: int = 0
    info: dict = field(default_factory=dict)

    @property
    def norms(self) -> torch.Tensor:
        """Token norms: (T, batch, L)."""
        return self.x.norm(dim=-1)

    @property
    def blew_up(self) -> torch.Tensor:
        """(batch, L) bool."""
        return torch.isfinite(self.blowup_times)


def time_grid(t_end: float, n_points: int = 200, t_first: float | None = None) -> torch.Tensor:
    """[0, log-spaced points from t_first to t_end]: (n_points,) float64."""
    if not (t_end > 0 and math.isfinite(t_end)):
        raise ConfigError(f"t_end must be a positive finite time, got {t_end}.")
    if n_points < 3:
        raise ConfigError(f"the output grid needs at least 3 points, got {n_points}.")
    t_first = t_first if t_first is not None else t_end * 1e-6
    t_first = min(t_first, t_end / 10)
    logs = torch.linspace(math.log10(t_first), math.log10(t_end), n_points - 1, dtype=torch.float64)
    return torch.cat([torch.zeros(1, dtype=torch.float64), 10.0 ** logs])


def _check_x0(system: TokenSystem, x0) -> torch.Tensor:
    x0 = torch.as_tensor(x0)
    if x0.dim() == 1 and system.dim == 1:
        x0 = x0[None, :, None]                    # (L,) for the 1-D system
    elif x0.dim() == 2:
        x0 = x0[None]                             # (L, D)
    if x0.dim() != 3 or x0.shape[-1] != system.dim or x0.shape[1] < 1:
        raise DataError(f"initial tokens must have shape (batch, L, D={system.dim}) or (L, D), "
                        f"got {tuple(torch.as_tensor(x0).shape)}.")
    if not torch.isfinite(x0).all():
        raise DataError("initial tokens contain NaN or infinite values.")
    return x0


def simulate(system: TokenSystem, x0, t_end: float = 100.0, *, n_points: int = 200,
             t_first: float | None = None, method: str = "dopri5", rtol: float = 1e-8,
             atol: float = 1e-10, dtype: torch.dtype = torch.float64, backend: str = "auto",
             blowup_rtol: float = 1e-6, blowup_norm: float | None = None,
             max_steps: int = 1_500, max_evals: int | None = None) -> Simulation:
    """Integrate dx/dt = vector_field(x) from x0 over a log-spaced grid to ``t_end``.

    x0: (batch, L, D), (L, D), or (L,) for D = 1. ``blowup_norm`` defaults to
    1e12 · max(1, max |x0|). ``max_evals`` caps the vector-field evaluations: when it is
    spent, or when the stiff fallback solver gives up, the result ends at the last output
    time reached (``info["truncated_at"]``, ``info["solver_failure"]`` says why when the
    solver failed, and ``t_end`` is that time). Returns a :class:`Simulation`.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown integration method {method!r}; choose one of {', '.join(METHODS)}.")
    x0 = _check_x0(system, x0).to(dtype)
    system = system.to(dtype=dtype, device=x0.device)
    grid = time_grid(t_end, n_points, t_first)
    if blowup_norm is None:
        blowup_norm = 1e12 * max(1.0, float(x0.norm(dim=-1).max()))
    log_norm_cap = math.log(blowup_norm)
    log_rtol = math.log(blowup_rtol)
    batch, L, _ = x0.shape
    alive = torch.ones(batch, L, dtype=torch.bool)
    blowup = torch.full((batch, L), math.inf, dtype=torch.float64)
    blowup_states = x0.clone()
    counter = {"evals": 0}

    def field_masked(t, y):
        counter["evals"] += 1
        if max_evals is not None and counter["evals"] > max_evals:
            raise _EvalBudget()
        dy = vector_field(system, y, backend) * alive[..., None].to(y.dtype)
        # A trial step that overshoots a singularity yields inf/NaN; torchdiffeq turns a NaN
        # error estimate into a zero step. A huge finite value makes it reject and shrink.
        return torch.nan_to_num(dy, nan=1e150, posinf=1e150, neginf=-1e150)

    def margins(t, y, dy=None):
        """Per token (batch, L): log distance to the blow-up tests (≤ 0 means blowing up)."""
        if dy is None:
            dy = vector_field(system, y, backend) * alive[..., None].to(y.dtype)
        norm = y.norm(dim=-1).to(torch.float64)
        growth = (y * dy).sum(-1).to(torch.float64)              # ½ d|x|²/dt
        cap = log_norm_cap - torch.log(norm.clamp_min(1e-300))
        # e-folding time |x|² / (½ d|x|²/dt) = |x|/(d|x|/dt); only growing tokens count
        efold = torch.where(growth > 0, norm**2 / growth.clamp_min(1e-300), torch.full_like(norm, math.inf))
        rate = torch.log(efold.clamp_min(1e-300)) - (log_rtol + math.log(max(float(t), 1e-300)))
        m = torch.minimum(cap, rate)
        return torch.where(alive, m, torch.full_like(m, math.inf))

    def freeze(t_now: float, y: torch.Tensor, tol: float = 1e-6) -> bool:
        """Freeze every token that is blowing up at t_now, and the tokens after it."""
        m = margins(torch.tensor(t_now, dtype=torch.float64), y)
        hit = m <= tol
        if not hit.any():
            return False
        for b in range(batch):
            idx = torch.nonzero(hit[b]).flatten()
            if idx.numel():
                k = int(idx[0])
                newly = alive[b, k:].clone()
                blowup[b, k:][newly] = t_now
                blowup_states[b, k:][newly] = y[b, k:][newly]
                alive[b, k:] = False
        return True

    # Two passes per stretch between blow-ups: odeint_event finds the next blow-up (or
    # t_end) in one adaptive run, then odeint replays the same stretch onto the output
    # grid. Locating the event by bisection once per blow-up, rather than once per
    # output segment, keeps the cost near that of a plain integration.
    xs = [x0.clone()]
    valid = [alive.clone()]
    y = x0.clone()
    t_cur = 0.0
    gi = 1
    n_grid = grid.numel()
    stiff_from = None
    truncated = None
    failure = None
    while gi < n_grid:
        freeze(t_cur, y)
        if not alive.any():
            break
        if truncated is not None:
            break
        if stiff_from is not None:
            try:
                y_new, t_new = _stiff_segment(field_masked, y, t_cur, float(grid[gi]), rtol, atol, alive,
                                              blowup, blowup_states, margins)
            except _EvalBudget:
                truncated = t_cur
                break
            except _SolverFailure as exc:
                truncated, failure = t_cur, str(exc)
                break
            y, t_cur = y_new, t_new
            xs.append(y.clone())
            valid.append(alive.clone())
            gi += 1
            continue
        span = t_end - t_cur

        def event_fn(t, yy, t_start=t_cur, span=span):
            # positive until t_end or a blow-up, zero at the first of the two
            m = float(margins(t, yy).min())
            return torch.minimum((t_end - t) / span, torch.tensor(min(m, 1.0), dtype=t.dtype))

        opts = {"max_num_steps": max_steps}
        try:
            t_ev, sol = odeint_event(field_masked, y, torch.tensor(t_cur, dtype=torch.float64),
                                     event_fn=event_fn, method=method, rtol=rtol, atol=atol, options=opts)
            t_ev = float(t_ev)
            # the time-bound event is located to within the solver's atol (bisection on t)
            at_end = t_end - t_ev <= 4 * atol + 1e-9 * span + 1e-14 * t_end
            t_stop = t_end if at_end else t_ev
            stop_idx = gi
            while stop_idx < n_grid and float(grid[stop_idx]) <= t_stop and float(grid[stop_idx]) > t_cur:
                stop_idx += 1
            times = [t_cur] + grid[gi:stop_idx].tolist()
            if not at_end and times[-1] < t_stop:
                times.append(t_stop)
            if len(times) > 1:
                ys = odeint(field_masked, y, torch.tensor(times, dtype=torch.float64), method=method,
                            rtol=rtol, atol=atol, options=opts).detach()
            else:
                ys = y[None]
        except _EvalBudget:
            truncated = t_cur
            break
        except AssertionError:
            # Step budget exhausted or step-size underflow without a blow-up event: the system
            # has turned stiff (a saturated step size Δ makes some channels relax very fast).
            # Go on with scipy's LSODA, which switches to a stiff method, one output segment
            # at a time; blow-ups are then located only to the output grid.
            stiff_from = t_cur
            continue
        for k in range(1, stop_idx - gi + 1):
            xs.append(ys[k].clone())
            valid.append(alive.clone())
        gi = stop_idx
        y = ys[-1].clone()
        t_cur = t_stop
        if at_end:
            break
        # A blow-up drags later tokens along and their e-folding time may reach the test
        # first; freeze from the first token that is itself close to it (e-folding time
        # within 1e3 of the test), so that its driver is not left alive at the singularity.
        if not freeze(t_cur, y, tol=math.log(1e3)):
            # the event root sits within the solver tolerance of the test: freeze the token
            # closest to it so that the loop always advances
            m = margins(torch.tensor(t_cur, dtype=torch.float64), y)
            b, k = divmod(int(torch.argmin(m)), L)
            blowup_states[b, k:][alive[b, k:]] = y[b, k:][alive[b, k:]]
            blowup[b, k:][alive[b, k:]] = t_cur
            alive[b, k:] = False
    if truncated is not None:      # evaluation budget spent: end at the last output time
        grid = grid[:len(xs)]
        t_end = float(grid[-1])
    while len(xs) < n_grid and truncated is None:        # everything blew up before t_end
        xs.append(y.clone())
        valid.append(alive.clone())
    info_stiff = {"stiff_fallback_from": stiff_from, "truncated_at": truncated, "solver_failure": failure}
    x = torch.stack(xs)
    val = torch.stack(valid)
    return Simulation(t=grid, x=x, valid=val, blowup_times=blowup, blowup_states=blowup_states, system=system, t_end=float(t_end),
                      method=method, n_evals=counter["evals"],
                      info={**info_stiff, "blowup_rtol": blowup_rtol, "blowup_norm": blowup_norm, "rtol": rtol, "atol": atol})


def _stiff_segment(field, y, t0, t1, rtol, atol, alive, blowup, blowup_states, margins):
    """One output segment with LSODA; tokens that blow up inside it are frozen at t1."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ys = odeint(field, y, torch.tensor([t0, t1], dtype=torch.float64), method="scipy_solver",
                        rtol=rtol, atol=atol, options={"solver": "LSODA"})
            y1 = ys[-1].detach()
        except _EvalBudget:
            raise
        except Exception as exc:  # scipy reports failure in many ways; keep the sentence
            raise _SolverFailure(f"the stiff integrator failed after t={t0:.6g} ({exc}).") from None
    bad = ~torch.isfinite(y1).all(dim=-1)
    m = margins(torch.tensor(t1, dtype=torch.float64), torch.where(bad[..., None], y, y1))
    hit = (bad | (m <= math.log(1e3))) & alive
    for b in range(y.shape[0]):
        idx = torch.nonzero(hit[b]).flatten()
        if idx.numel():
            k = int(idx[0])
            newly = alive[b, k:].clone()
            blowup[b, k:][newly] = t1
            src = torch.where(bad[b, k:, None], y[b, k:], y1[b, k:])
            blowup_states[b, k:][newly] = src[newly]
            y1[b, k:] = src
            alive[b, k:] = False
    if not torch.isfinite(y1).all():
        raise _SolverFailure(f"the stiff integrator produced non-finite tokens after t={t0:.6g}.")
    return y1, t1
