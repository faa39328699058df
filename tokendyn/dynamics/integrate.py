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
they are frozen and all get that time. Those that met a blow-up test themselves are marked
``blew_up``; the others were stopped with them. The frozen tokens form a suffix of each
batch row, so after a freeze the solver integrates only the longest live prefix.

Stiffness: once a token is large, its step size Δ saturates and some channels relax on a
time scale far below t, so explicit solvers crawl. The default ``auto`` method is LSODA,
which switches between Adams (non-stiff) and BDF (stiff) by itself; in stiff mode it
needs the Jacobian, computed exactly by reverse-mode autodiff of the vector field
(:meth:`Integrator.jacobian`; the finite-difference :meth:`Integrator.jacobian_fd` is its
plain reference). That Jacobian is dense, (batch·L·D)² entries, so its memory is estimated
first: beyond ``memory_limit`` the stiff solver is refused and ``auto`` runs the explicit
RK45 instead.
"""

from __future__ import annotations

import contextlib
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
# Up to this many elements per field evaluation (batch·L·D·N) the run uses one torch thread: on such
# small tensors intra-op threads only add synchronisation, and on a loaded machine far more (the
# D = 16, L = 10 case of benchmarks/simulate_d16.py ran 10× slower with 2 threads beside other jobs).
SINGLE_THREAD_ELEMENTS = 65_536
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
    blowup_times: (batch, L) float64, the time the token's trajectory ended at a blow-up (its own,
    or one it was stopped with), ``inf`` where it ran on;
    blowup_states: (batch, L, D) the token at that time (x(0) where none);
    blew_up: (batch, L) bool, True for the tokens that met a blow-up test themselves; the other
    tokens with a finite ``blowup_times`` were stopped with them (see :meth:`Integrator.freeze`).
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
    blew_up: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.blew_up is None:
            self.blew_up = torch.isfinite(self.blowup_times)

    @property
    def stopped(self) -> torch.Tensor:
        """(batch, L) True for the tokens stopped with a blow-up without meeting a test themselves."""
        return torch.isfinite(self.blowup_times) & ~self.blew_up

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


# solvers that factorise a Jacobian with LAPACK (scipy.linalg), where BLAS threads pay; LSODA
# factorises with the LINPACK routines scipy builds into ODEPACK, column by column (level-1 BLAS)
LAPACK_METHODS = ("BDF", "Radau")


def solver_blas_threads(method: str):
    """A context in which numpy's BLAS runs on one thread, unless ``method`` factorises with
    LAPACK (:data:`LAPACK_METHODS`). The other solvers' array work is on vectors of the state's
    size, where threads gain nothing, while the vector field runs on torch's threads: the two
    pools side by side (OpenBLAS's and OpenMP's, each spinning while idle) took the cores from each
    other: on 2 cores the flows of four real layers (D = 128, 256 tokens, RK45) took 21 ms a field
    evaluation instead of 4, with the same results (benchmarks/flow_threads.py)."""
    if method in LAPACK_METHODS:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:    # a dependency; a source tree run on an environment without it only runs slower
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


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
        self.live_shape = self.shape      # (batch, k, D): the tokens the solver integrates (start_solver)
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
        self.blew_up = torch.zeros(batch, L, dtype=torch.bool)
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
        """dx/dt with frozen tokens held still: (c·batch, k, D) -> same shape, k ≤ L the first k tokens
        (the field is causal: those of a prefix are the prefix of the field); one counted evaluation.
        (c > 1 stacks c copies of the batch, as the finite-difference Jacobian does.)"""
        self.n_evals += 1
        batch, _, D = self.shape
        k = y.shape[1]
        dy = self._raw_field(y.to(self.device, self.dtype), rows=batch).to("cpu", torch.float64)
        dy = (dy.reshape(-1, batch, k, D) * self.alive[None, :, :k, None]).reshape(y.shape)
        # A trial step that overshoots a singularity yields inf/NaN; a huge finite value
        # makes the solver reject the step and shrink it instead.
        return torch.nan_to_num(dy, nan=1e150, posinf=1e150, neginf=-1e150)

    def _raw_field(self, y: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """dx/dt of every token, frozen or not, on the field's device and dtype: (k, L, D) -> same;
        the explicit sum for a handful of tokens, else one scan (see SMALL_SYSTEM_TERMS). rows: the
        batch rows the choice is made for (the Jacobian's copies of one state count once)."""
        batch, L, D = y.shape
        rows = batch if rows is None else rows
        if rows * L * L * D * self.system.state <= SMALL_SYSTEM_TERMS:
            return self.field_system.vector_field_naive(y)
        return self.field_system.vector_field(y, self.backend)

    def _fun(self, t: float, y: np.ndarray) -> np.ndarray:
        return self.field(t, torch.from_numpy(y).view(self.live_shape)).reshape(-1).numpy()

    def _jac(self, t: float, y: np.ndarray) -> np.ndarray:
        """The solver's Jacobian: :meth:`jacobian` as an (n, n) array, n = batch·L·D."""
        if self.stiff_from is None:
            self.stiff_from = float(t)
        return self.jacobian(t, torch.from_numpy(y).view(self.live_shape)).numpy()

    def _chunk(self, L: int) -> int:
        """Copies of the state of L tokens per batched call of a Jacobian, bounding its working memory
        to 256 MiB."""
        batch, _, D = self.shape
        return max(1, (256 * 2**20) // (8 * batch * L * D * (4 * self.system.state + 8)))

    def jacobian(self, t: float, y: torch.Tensor) -> torch.Tensor:
        """Exact dense Jacobian of the masked field by reverse-mode autodiff: (n, n) float64,
        n = batch·k·D; y: (batch, k, D), the first k ≤ L tokens.

        Row i of a batch row's Jacobian is the gradient of output i; the state is copied once
        per output (in chunks that bound the memory) and one backward pass with the unit
        cotangents gives every row of the chunk, as ``torch.func.jacrev`` does with vmap (which
        the scan's own autograd Function does not support). Frozen tokens have zero rows; the
        batch rows are independent, so the matrix is block-diagonal over them.
        :meth:`jacobian_fd` is the plain finite-difference reference it is tested against.
        """
        batch, L, D = y.shape
        m = L * D
        y = y.reshape(batch, m).to(self.device, self.dtype)
        rows = torch.zeros(batch, m, m, dtype=torch.float64)                # [b, output i, input j]
        live_out = self.alive[:, :L, None].expand(batch, L, D).reshape(batch, m)
        live_idx = torch.nonzero(live_out.any(0)).flatten().tolist()        # outputs that can be nonzero
        chunk = self._chunk(L)
        for lo in range(0, len(live_idx), chunk):
            outs = torch.tensor(live_idx[lo:lo + chunk])
            c = len(outs)
            Y = y.expand(c, batch, m).clone().requires_grad_(True)          # (c, batch, m)
            with torch.enable_grad():
                F_ = self._raw_field(Y.view(c * batch, L, D), rows=batch).reshape(c, batch, m)
                seed = torch.zeros(c, batch, m, dtype=F_.dtype, device=F_.device)
                seed[torch.arange(c), :, outs] = 1.0
                (grad,) = torch.autograd.grad(F_, Y, seed)
            self.n_evals += 1
            rows[:, outs, :] = grad.detach().to("cpu", torch.float64).transpose(0, 1)
        rows *= live_out[..., None]
        rows = torch.nan_to_num(rows, nan=0.0, posinf=1e150, neginf=-1e150)
        J = torch.zeros(batch, m, batch, m, dtype=torch.float64)
        for b in range(batch):
            J[b, :, b, :] = rows[b]
        return J.reshape(batch * m, batch * m)

    def jacobian_fd(self, t: float, y: torch.Tensor) -> torch.Tensor:
        """Dense Jacobian of the masked field by forward differences, the plain reference of
        :meth:`jacobian`: (n, n) float64, y: (batch, k, D). All perturbed states go through the
        vector field as one batch (in chunks that bound the memory); the batch rows are
        independent, so one perturbation per unknown of a row serves all rows."""
        batch, L, D = y.shape
        m = L * D
        y0 = y.reshape(batch, m).to(torch.float64)
        f0 = self.field(t, y0.view(batch, L, D)).view(batch, m)
        step = 1.4901161193847656e-08 * y0.abs().clamp_min(1.0)        # √eps · max(1, |y_i|)
        J = torch.zeros(batch, m, batch, m, dtype=torch.float64)
        chunk = self._chunk(L)
        for lo in range(0, m, chunk):
            cols = torch.arange(lo, min(m, lo + chunk))
            pert = y0.expand(len(cols), batch, m).clone()              # (c, batch, m)
            pert[torch.arange(len(cols)), :, cols] += step[:, cols].T
            f = self.field(t, pert.view(len(cols) * batch, L, D)).reshape(len(cols), batch, m)
            h = step[:, cols].T[..., None]                               # (c, batch, 1)
            d = (f - f0) / h                                             # (c, batch, m): column c of row b
            for b in range(batch):
                J[b, :, b, lo:lo + len(cols)] = d[:, b, :].T
        return J.reshape(batch * m, batch * m)

    def margins(self, t: float, y: torch.Tensor) -> torch.Tensor:
        """Per token (batch, L): log distance to the blow-up tests (≤ 0: blowing up; inf when frozen).
        y: (batch, L, D); the field is evaluated on the live prefix only."""
        k = self.live_shape[1]
        dy = torch.zeros_like(y)
        dy[:, :k] = self.field(t, y[:, :k])
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
        # Frozen tokens form a suffix of every batch row, and no earlier token depends on them: the
        # solver integrates only the first k tokens, k the longest live prefix, and the rest stay put.
        batch, _, D = self.shape
        k = int(self.alive.sum(dim=1).max())
        self.live_shape = (batch, k, D)
        self.solver = cls(self._fun, self.t, self.y[:, :k].reshape(-1).numpy().copy(), self.grid[-1],
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
        """The tokens at time t inside the last step: (batch, L, D) (the frozen ones where they stopped)."""
        y = self.y.clone()
        live = self.solver.y if t == self.solver.t else np.asarray(dense(t))
        y[:, :self.live_shape[1]] = torch.from_numpy(live.copy()).view(self.live_shape)
        return y

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
        the test and no token is that close, the token nearest to it is frozen.

        Of the tokens frozen in a row, those that meet a blow-up test at t (margin ≤ 0; or the
        row's smallest margin when none does, since the root sits within the root finder's
        tolerance of the test) are marked ``blew_up``: they stopped the run. The others were
        stopped with them: tokens after them (no solution past t) or close to a test."""
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
                edge = max(0.0, float(m[b][newly].min()))       # the root sits within a tolerance of 0
                self.blew_up[b] |= newly & (m[b] <= edge + 1e-9)

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
        batch, L, D = self.shape
        threads = torch.get_num_threads()
        if batch * L * D * self.system.state <= SINGLE_THREAD_ELEMENTS and self.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            with solver_blas_threads(self.method):
                return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> Simulation:
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
                          n_evals=self.n_evals, info=info, blew_up=self.blew_up.clone())


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
