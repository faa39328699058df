"""Integration of the token system with finite-time blow-up detection (THEORY.md sections 2-3).

The ODE dx/dt = vector_field(x) is solved by one of scipy's adaptive solvers, driven one
step at a time by :class:`Integrator`, whose methods are the steps of the loop:

- :meth:`Integrator.advance` takes one solver step;
- :meth:`Integrator.record` writes the output grid points the step passed over, from the
  step's dense output (the last grid point is t_end itself, reached exactly);
- :meth:`Integrator.find_blowup` decides whether a live token blows up within the step and
  locates the time by root finding on the dense output;
- :meth:`Integrator.freeze` ends the blown-up tokens, after which the solver restarts;
- :meth:`Integrator.out_of_budget` ends a run that spent its evaluation or wall-clock budget.

A token counts as blowing up when

- its norm exceeds ``blowup_norm``, or
- it grows with an e-folding time |x| / (d|x|/dt) below ``blowup_rtol · t``.

The second test is scale-free: near a singularity |x| ~ (T − t)^(−1/3) (THEORY.md
section 3) the e-folding time is 3(T − t), so the recorded time is within
blowup_rtol·t/3 of the true blow-up, while slow growth (e-folding ~ t·ln t) and decay
never trigger it. It also stops well before float64 can no longer resolve T − t.

The system is causal (dx_l/dt depends on x_1..x_l only), so when token k blows up the
tokens before it keep a well-defined solution and are integrated further; token k and
every token after it (whose vector field contains x_k) have no solution past that time:
they are frozen and all get that blow-up time.

Stiffness: once a token is large, its step size Δ saturates and some channels relax on a
time scale far below t, so explicit solvers crawl. The default ``auto`` method is LSODA,
which switches between Adams (non-stiff) and BDF (stiff) by itself; in stiff mode it
needs the Jacobian, computed here by reverse-mode autodiff of the vector field. That
Jacobian is dense, (batch·L·D)² entries, so its memory is estimated first: beyond
``memory_limit`` the stiff solver is refused and ``auto`` runs the explicit RK45 instead.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from ..errors import ConfigError, DataError

# scipy.integrate solvers; "auto" is LSODA when its Jacobian fits in memory, else RK45.
METHODS = ("auto", "LSODA", "RK45", "DOP853", "RK23", "BDF", "Radau")
STIFF_METHODS = ("LSODA", "BDF", "Radau")
DEFAULT_MEMORY_LIMIT = 2 * 2**30          # bytes
# Below this many terms (batch·L²·D·N) the explicit sum over P_lj is cheaper than one scan,
# whose fixed cost dominates for a handful of tokens (measured on CPU; see benchmarks/dynamics.py).
SMALL_SYSTEM_TERMS = 32_768
# LSODA keeps n² work space, the Jacobian and its LU factors: about three n × n arrays.
_JACOBIAN_COPIES = 3


class FlowSystem(Protocol):
    """What the integrator needs of a token system: the Mamba-1 :class:`~.vector_field.TokenSystem`
    and the Mamba-2 :class:`~.ssd_system.SSDSystem` both provide it.

    dim: the token dimension D; state: the state size N, which scales the working memory and the
    cost of the explicit sum in the estimates below; ``to`` casts the parameters;
    ``vector_field(x, backend)`` is dx/dt by one scan and ``vector_field_naive(x)`` by the explicit
    sum over j ≤ l (cheaper for a handful of tokens), both x: (batch, L, D) -> (batch, L, D).
    """

    @property
    def dim(self) -> int: ...

    @property
    def state(self) -> int: ...

    def to(self, dtype=None, device=None) -> FlowSystem: ...

    def vector_field(self, x: torch.Tensor, backend: str = "auto") -> torch.Tensor: ...

    def vector_field_naive(self, x: torch.Tensor) -> torch.Tensor: ...


def jacobian_bytes(batch: int, tokens: int, dim: int) -> int:
    """Memory of the stiff solver's dense Jacobian and factors for (batch, L, D) tokens."""
    n = batch * tokens * dim
    return _JACOBIAN_COPIES * n * n * 8


def trajectory_bytes(batch: int, tokens: int, dim: int, state: int, n_points: int) -> int:
    """Memory of the recorded trajectory plus the vector field's working arrays."""
    return 8 * batch * tokens * dim * (n_points + 4 * state + 16)


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.3g} GiB"


@dataclass
class Simulation:
    """Result of :func:`simulate`.

    t: (T,) output times (float64), t[0] = 0, t[-1] = t_end; x: (T, batch, L, D) tokens;
    valid: (T, batch, L) True where the token still exists (before its blow-up);
    blowup_times: (batch, L) float64, ``inf`` where the token did not blow up by t_end;
    blowup_states: (batch, L, D) the token when its blow-up was detected (x(0) where none).
    Entries of x where ``valid`` is False hold the token at its blow-up time.
    A run cut short (budget, wall clock, solver failure) ends at ``t_end`` = the time it
    reached, and its last sample is the state at that time (``info["truncated_at"]``,
    ``info["stop_reason"]``).
    """

    t: torch.Tensor
    x: torch.Tensor
    valid: torch.Tensor
    blowup_times: torch.Tensor
    blowup_states: torch.Tensor
    system: FlowSystem
    t_end: float
    method: str
    n_evals: int = 0
    info: dict = field(default_factory=dict)

    @property
    def norms(self) -> torch.Tensor:
        """Token norms: (T, batch, L)."""
        return self.x.norm(dim=-1)

    @property
    def complete(self) -> bool:
        """True when the run reached its requested t_end (or every token blew up before it)."""
        return self.info.get("truncated_at") is None


def time_grid(t_end: float, n_points: int = 200, t_first: float | None = None) -> torch.Tensor:
    """[0, log-spaced points from t_first to t_end]: (n_points,) float64; the last is t_end exactly."""
    if not (t_end > 0 and math.isfinite(t_end)):
        raise ConfigError(f"t_end must be a positive finite time, got {t_end}.")
    if n_points < 3:
        raise ConfigError(f"the output grid needs at least 3 points, got {n_points}.")
    t_first = t_first if t_first is not None else t_end * 1e-6
    t_first = min(t_first, t_end / 10)
    logs = torch.linspace(math.log10(t_first), math.log10(t_end), n_points - 1, dtype=torch.float64)
    grid = torch.cat([torch.zeros(1, dtype=torch.float64), 10.0 ** logs])
    grid[-1] = t_end                       # 10**log10(t_end) can miss t_end by an ulp
    return grid


def check_x0(system: FlowSystem, x0) -> torch.Tensor:
    """Initial tokens as (batch, L, D) float64; accepts (L, D), and (L,) when D = 1."""
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
    return x0.to(torch.float64)


def choose_method(method: str, shape: tuple[int, int, int], memory_limit: float) -> tuple[str, str | None]:
    """The scipy solver to run and, when the stiff solver was refused, the sentence why."""
    if method not in METHODS:
        raise ConfigError(f"unknown integration method {method!r}; choose one of {', '.join(METHODS)}.")
    need = jacobian_bytes(*shape)
    if need <= memory_limit:
        return ("LSODA" if method == "auto" else method), None
    why = (f"the stiff solver was refused: its Jacobian for {shape[0] * shape[1] * shape[2]:,} unknowns "
           f"would take {gib(need)}, above the memory limit of {gib(memory_limit)}")
    if method == "auto":
        return "RK45", why
    if method in STIFF_METHODS:
        raise ConfigError(why[0].upper() + why[1:] + "; choose an explicit method (RK45, DOP853) or raise the limit.")
    return method, None


class Integrator:
    """Integrates one batch of token systems over an output grid; see the module docstring.

    Build it, then call :meth:`run`; each step of the loop is a method that can be called
    (and tested) on its own.
    """

    def __init__(self, system: FlowSystem, x0: torch.Tensor, grid: torch.Tensor, *, method: str,
                 rtol: float, atol: float, dtype: torch.dtype, backend: str, blowup_rtol: float,
                 blowup_norm: float, max_evals: int | None, time_limit: float | None,
                 stiff_note: str | None = None, progress=None, stop_at_blowup: bool = False,
                 device: torch.device | str | None = None):
        self.system = system.to(dtype=dtype)
        # where the vector field is evaluated; the solver's state stays on the CPU (scipy)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.field_system = self.system.to(device=self.device) if self.device.type != "cpu" else self.system
        self.dtype, self.backend = dtype, backend
        self.shape = tuple(x0.shape)                           # (batch, L, D)
        self.grid = grid.tolist()
        self.method, self.rtol, self.atol = method, rtol, atol
        self.log_norm_cap = math.log(blowup_norm)
        self.log_rtol = math.log(blowup_rtol)
        self.max_evals, self.time_limit = max_evals, time_limit
        self.progress = progress
        self.stop_at_blowup = stop_at_blowup
        batch, L, _ = self.shape
        self.alive = torch.ones(batch, L, dtype=torch.bool)
        self.blowup_times = torch.full((batch, L), math.inf, dtype=torch.float64)
        self.blowup_states = x0.clone()
        self.t, self.y = 0.0, x0.clone()
        self.samples, self.sample_valid = [x0.clone()], [self.alive.clone()]
        self.n_evals = 0
        self.stiff_from: float | None = None
        self.stiff_note = stiff_note
        self.stop_reason: str | None = None
        self.failed = False
        self.started = time.perf_counter()
        self.solver = None

    # ----- the vector field, as the solver sees it ---------------------------------------
    def field(self, t: float, y: torch.Tensor) -> torch.Tensor:
        """dx/dt with frozen tokens held still: (k·batch, L, D) -> same shape; one counted evaluation.
        (k > 1 stacks k copies of the batch, as the Jacobian does.)"""
        self.n_evals += 1
        batch, L, D = y.shape
        y = y.to(self.device, self.dtype)
        if batch * L * L * D * self.system.state <= SMALL_SYSTEM_TERMS:
            dy = self.field_system.vector_field_naive(y)
        else:
            dy = self.field_system.vector_field(y, self.backend)
        dy = dy.to("cpu", torch.float64)
        dy = (dy.reshape(-1, *self.shape) * self.alive[None, ..., None]).reshape(y.shape)
        # A trial step that overshoots a singularity yields inf/NaN; a huge finite value
        # makes the solver reject the step and shrink it instead.
        return torch.nan_to_num(dy, nan=1e150, posinf=1e150, neginf=-1e150)

    def _fun(self, t: float, y: np.ndarray) -> np.ndarray:
        return self.field(t, torch.from_numpy(y).view(self.shape)).reshape(-1).numpy()

    def _jac(self, t: float, y: np.ndarray) -> np.ndarray:
        """Dense Jacobian of the (masked) field by forward differences: (n, n), n = batch·L·D.

        All perturbed states go through the vector field as one batch (in chunks that bound
        the memory), so a Jacobian costs a few scans rather than n separate evaluations; the
        batch rows are independent, so one perturbation per unknown of a row serves all rows.
        """
        if self.stiff_from is None:
            self.stiff_from = float(t)
        batch, L, D = self.shape
        m = L * D
        y0 = torch.from_numpy(y).view(batch, m)
        f0 = self.field(t, y0.view(self.shape)).view(batch, m)
        step = 1.4901161193847656e-08 * y0.abs().clamp_min(1.0)        # √eps · max(1, |y_i|)
        J = np.zeros((batch, m, batch, m))
        chunk = max(1, (256 * 2**20) // (8 * batch * m * (4 * self.system.state + 8)))
        for lo in range(0, m, chunk):
            cols = torch.arange(lo, min(m, lo + chunk))
            pert = y0.expand(len(cols), batch, m).clone()              # (c, batch, m)
            pert[torch.arange(len(cols)), :, cols] += step[:, cols].T
            f = self.field(t, pert.view(len(cols) * batch, L, D)).reshape(len(cols), batch, m)
            h = step[:, cols].T[..., None]                               # (c, batch, 1)
            d = ((f - f0) / h).numpy()                                   # (c, batch, m): column c of row b
            for b in range(batch):
                J[b, :, b, lo:lo + len(cols)] = d[:, b, :].T
        return J.reshape(batch * m, batch * m)

    def margins(self, t: float, y: torch.Tensor) -> torch.Tensor:
        """Per token (batch, L): log distance to the blow-up tests (≤ 0: blowing up; inf when frozen)."""
        dy = self.field(t, y)
        norm = y.norm(dim=-1)
        growth = (y * dy).sum(-1)                                # ½ d|x|²/dt
        cap = self.log_norm_cap - torch.log(norm.clamp_min(1e-300))
        # e-folding time |x|² / (½ d|x|²/dt) = |x|/(d|x|/dt); only growing tokens count
        efold = torch.where(growth > 0, norm**2 / growth.clamp_min(1e-300), torch.full_like(norm, math.inf))
        rate = torch.log(efold.clamp_min(1e-300)) - (self.log_rtol + math.log(max(t, 1e-300)))
        m = torch.minimum(cap, rate)
        return torch.where(self.alive, m, torch.full_like(m, math.inf))

    # ----- the steps of the loop ---------------------------------------------------------
    def start_solver(self) -> None:
        """(Re)start the solver at (self.t, self.y): at the beginning and after a freeze."""
        from scipy import integrate

        cls = getattr(integrate, self.method)
        kw = {"jac": self._jac} if self.method in STIFF_METHODS else {}
        self.solver = cls(self._fun, self.t, self.y.reshape(-1).numpy().copy(), self.grid[-1],
                          rtol=self.rtol, atol=self.atol, **kw)

    def advance(self) -> bool:
        """One solver step from self.t. False (and ``stop_reason`` set) when the solver failed."""
        t_old = self.solver.t
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            message = self.solver.step()
        if self.solver.status == "failed":
            self.failed = True
            self.stop_reason = f"the {self.method} solver failed after t={t_old:.6g}: {message}"
            return False
        return True

    def state_at(self, t: float, dense) -> torch.Tensor:
        """The tokens at time t inside the last step: (batch, L, D)."""
        if t == self.solver.t:
            return torch.from_numpy(self.solver.y.copy()).view(self.shape)
        return torch.from_numpy(np.asarray(dense(t))).view(self.shape)

    def record(self, t_stop: float, dense) -> None:
        """Append the samples at the output grid points in (self.t, t_stop]."""
        while len(self.samples) < len(self.grid) and self.grid[len(self.samples)] <= t_stop:
            self.samples.append(self.state_at(self.grid[len(self.samples)], dense))
            self.sample_valid.append(self.alive.clone())

    def suspects(self, t_old: float, y_old: torch.Tensor, t_new: float, y_new: torch.Tensor) -> bool:
        """Cheap screen over the step just taken: could a live token be blowing up? The growth
        rate measured across the step stands in for the exact one, with a factor 10 of slack (the
        rate at the end of a step towards a singularity exceeds its mean over the step by less)."""
        n_old, n_new = y_old.norm(dim=-1), y_new.norm(dim=-1)
        if bool(((n_new >= math.exp(self.log_norm_cap) / 1e3) & self.alive).any()):
            return True
        rate = (torch.log(n_new.clamp_min(1e-300)) - torch.log(n_old.clamp_min(1e-300))) / max(t_new - t_old, 1e-300)
        fast = rate * math.exp(self.log_rtol) * t_new > 0.1         # e-folding < 10·rtol·t
        return bool((fast & self.alive & (n_old > 0)).any())

    def find_blowup(self, t_old: float, t_new: float, dense) -> float | None:
        """The first time in (t_old, t_new] at which a live token meets a blow-up test, located
        by root finding on the dense output; None when none does."""
        if float(self.margins(t_new, self.state_at(t_new, dense)).min()) > 0:
            return None

        def g(t):
            return float(self.margins(t, self.state_at(t, dense)).min())

        if g(t_old) <= 0:
            return t_old
        from scipy.optimize import brentq

        return brentq(g, t_old, t_new, xtol=1e-12 * max(t_new, 1.0), rtol=1e-12)

    def freeze(self, t: float, y: torch.Tensor) -> None:
        """Freeze at time t, in each batch row, the first token close to a blow-up test and every
        token after it. "Close" is an e-folding time within 10³ of the test: a blow-up drags the
        later tokens along and theirs may reach the test first, and the token driving them must
        not be left alive at the singularity. When the root sits within the solver tolerance of
        the test and no token is that close, the token nearest to it is frozen."""
        m = self.margins(t, y)
        hit = m <= math.log(1e3)
        if not hit.any():
            hit = torch.zeros_like(hit).view(-1)
            hit[int(torch.argmin(m))] = True
            hit = hit.view(m.shape)
        for b in range(hit.shape[0]):
            idx = torch.nonzero(hit[b]).flatten()
            if idx.numel():
                newly = self.alive[b].clone()
                newly[: int(idx[0])] = False
                self.blowup_times[b][newly] = t
                self.blowup_states[b][newly] = y[b][newly]
                self.alive[b][newly] = False

    def out_of_budget(self) -> str | None:
        """Why the run must stop now (evaluation budget or wall clock), or None."""
        if self.max_evals is not None and self.n_evals >= self.max_evals:
            return f"evaluation budget of {self.max_evals:,} spent"
        elapsed = time.perf_counter() - self.started
        if self.time_limit is not None and elapsed >= self.time_limit:
            return f"wall-clock limit of {self.time_limit:g} s reached"
        return None

    # ----- the loop ------------------------------------------------------------------------
    def run(self) -> Simulation:
        t_end = self.grid[-1]
        self.start_solver()
        while self.t < t_end and self.alive.any():
            t_old, y_old = self.t, self.y
            if not self.advance():
                break
            t_new, dense = self.solver.t, self.solver.dense_output()
            y_new = self.state_at(t_new, dense)
            t_blow = None
            if self.suspects(t_old, y_old, t_new, y_new):
                t_blow = self.find_blowup(t_old, t_new, dense)
            if t_blow is not None:
                self.record(t_blow, dense)
                self.t, self.y = t_blow, self.state_at(t_blow, dense).clone()
                self.freeze(self.t, self.y)
                if self.stop_at_blowup:
                    self.stop_reason = f"stopped at the first blow-up (t={self.t:.6g}), as asked"
                    break
                if self.alive.any() and self.t < t_end:
                    self.start_solver()
            else:
                self.record(t_new, dense)
                self.t, self.y = t_new, y_new.clone()
            if self.progress is not None:
                self.progress(self.t, self.n_evals, int((~self.alive).sum()))
            if self.t < t_end and self.alive.any():
                self.stop_reason = self.stop_reason or self.out_of_budget()
                if self.stop_reason is not None:
                    break
        return self.result()

    def result(self) -> Simulation:
        grid = torch.tensor(self.grid, dtype=torch.float64)
        truncated = None
        if self.alive.any() and self.t < self.grid[-1]:
            # cut short: end at the time reached, with the state there as the last sample
            truncated = self.t
            n = len(self.samples)
            if self.grid[n - 1] < self.t:
                grid = torch.cat([grid[:n], torch.tensor([self.t], dtype=torch.float64)])
                self.samples.append(self.y.clone())
                self.sample_valid.append(self.alive.clone())
            else:
                grid = grid[:n]
        while len(self.samples) < grid.numel():        # every token blew up before t_end
            self.samples.append(self.y.clone())
            self.sample_valid.append(self.alive.clone())
        info = {"stiff_fallback_from": self.stiff_from, "stiff_refused": self.stiff_note,
                "truncated_at": truncated, "stop_reason": self.stop_reason if truncated is not None else None,
                "solver_failure": self.stop_reason if self.failed else None,
                "rtol": self.rtol, "atol": self.atol, "blowup_rtol": math.exp(self.log_rtol),
                "blowup_norm": math.exp(self.log_norm_cap),
                "wall_s": time.perf_counter() - self.started}
        return Simulation(t=grid, x=torch.stack(self.samples).to(self.dtype),
                          valid=torch.stack(self.sample_valid),
                          blowup_times=self.blowup_times, blowup_states=self.blowup_states.to(self.dtype),
                          system=self.system, t_end=float(grid[-1]), method=self.method,
                          n_evals=self.n_evals, info=info)


def simulate(system: FlowSystem, x0, t_end: float = 100.0, *, n_points: int = 200,
             t_first: float | None = None, method: str = "auto", rtol: float = 1e-8,
             atol: float = 1e-10, dtype: torch.dtype = torch.float64, backend: str = "auto",
             blowup_rtol: float = 1e-6, blowup_norm: float | None = None,
             max_evals: int | None = None, time_limit: float | None = None,
             memory_limit: float = DEFAULT_MEMORY_LIMIT, progress=None, stop_at_blowup: bool = False,
             device: torch.device | str | None = None) -> Simulation:
    """Integrate dx/dt = vector_field(x) from x0 over a log-spaced grid to ``t_end``.

    Arguments:
        system: a :class:`FlowSystem` (a Mamba-1 ``TokenSystem`` or a Mamba-2 ``SSDSystem``).
        x0: (batch, L, D), (L, D), or (L,) for D = 1.
        method: one of :data:`METHODS` (scipy.integrate solvers; ``auto`` = LSODA, or RK45
            when the stiff solver's Jacobian would exceed ``memory_limit`` bytes).
        blowup_norm: defaults to 1e12 · max(1, max |x0|).
        max_evals, time_limit: evaluation budget and wall-clock seconds (None: unbounded),
            checked after each solver step; a run that spends one ends at the time reached.
        progress: called after each step as progress(t, n_evals, n_blown_up).
        stop_at_blowup: end the run at the first blow-up (the tokens still alive are then cut
            short there, ``info["stop_reason"]`` says so): enough to tell a blow-up and its time,
            and far cheaper than following the earlier tokens, which turn stiff afterwards.
        device: where the vector field (one selective scan) is evaluated, e.g. the GPU a model
            sits on; the solver and the returned trajectory stay on the CPU. None: the CPU.
    Returns a :class:`Simulation`.
    """
    for name, v in (("max_evals", max_evals), ("time_limit", time_limit), ("memory_limit", memory_limit)):
        if v is not None and not v > 0:
            raise ConfigError(f"{name} must be positive, got {v}.")
    x0 = check_x0(system, x0)
    batch, L, D = x0.shape
    need = trajectory_bytes(batch, L, D, system.state, n_points)
    if need > memory_limit:
        raise ConfigError(f"the trajectory of {batch * L:,} tokens × {n_points:,} points would take "
                          f"{gib(need)}, above the memory limit of {gib(memory_limit)}.")
    chosen, note = choose_method(method, (batch, L, D), memory_limit)
    grid = time_grid(t_end, n_points, t_first)
    if blowup_norm is None:
        blowup_norm = 1e12 * max(1.0, float(x0.norm(dim=-1).max()))
    return Integrator(system, x0, grid, method=chosen, rtol=rtol, atol=atol, dtype=dtype, backend=backend,
                      blowup_rtol=blowup_rtol, blowup_norm=blowup_norm, max_evals=max_evals,
                      time_limit=time_limit, stiff_note=note, progress=progress,
                      stop_at_blowup=stop_at_blowup, device=device).run()
