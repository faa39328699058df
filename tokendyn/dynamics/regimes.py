"""Regimes of the token system: predicted from the parameters, measured from a simulation.

Regime names: ``convergence``, ``slow_divergence``, ``fast_divergence``, ``static``.

Prediction for D = 1 follows THEORY.md section 3 (the paper's theorems), with the
[derived] estimates beside it; for D > 1 it follows the paper's Figure-6 observation
(an empirical rule, not a theorem) on the eigen-signature of M_s.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from ..errors import DataError
from .integrate import Simulation
from .spectrum import eigen_signature
from .vector_field import TokenSystem

REGIMES = ("convergence", "slow_divergence", "fast_divergence", "static")
# What a simulation reports when it could not decide: cut short before t_end (budget, wall
# clock, solver failure) without any blow-up.
UNDETERMINED = "undetermined"


def softplus(z: float) -> float:
    return z + math.log1p(math.exp(-z)) if z > 0 else math.log1p(math.exp(z))


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def regime_from_signature(positive: int, negative: int) -> str:
    """Idealised regime of a D-dimensional layer from the signature of M_s (THEORY.md section 4).

    Any positive eigenvalue -> ``"divergence"`` (some direction grows under the
    quadratic term); none positive but some negative -> ``"convergence"``; M_s = 0 ->
    ``"static"`` (the quadratic term vanishes and tokens do not move).
    """
    if positive > 0:
        return "divergence"
    if negative > 0:
        return "convergence"
    return "static"


@dataclass
class RegimePrediction:
    """What the parameters say before any integration.

    blowup_bounds: per token, an upper bound on its own blow-up time (None where the
    token has no such bound); effective_blowup_bounds: per token, the smallest bound at
    or before its position (a blow-up drags every later token along).
    convergence_constants: per token, c_l in |x_l(t)| ≈ c_l/√t (D = 1, μ < 0).
    """

    regime: str
    rule: str
    blowup_bounds: list = field(default_factory=list)
    effective_blowup_bounds: list = field(default_factory=list)
    convergence_constants: list = field(default_factory=list)
    eigen_signature: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def blowup_bound(mu: float, s: float, x0: float, b: float = 0.0) -> float | None:
    """[derived] Upper bound on the blow-up time of a 1-D token with s·x0 ≥ 0, μ > 0.

    The j = l term alone gives d|x|/dt ≥ μ·|x|³·softplus(s·x + b). Two lower bounds on
    softplus(|s||x| + b) give two bounds, and the smaller is returned:
      softplus(z) ≥ z (b ≥ 0) or the tangent at b, σ(b)·|s||x| (b < 0):
          T ≤ 1 / (3 μ c |s| |x0|³), c = 1 if b ≥ 0 else σ(b)   (THEORY.md: c = 1, b = 0);
      softplus is increasing, so Δ ≥ softplus(b):  T ≤ 1 / (2 μ softplus(b) x0²).
    """
    if mu <= 0 or x0 == 0 or s * x0 < 0:
        return None
    bounds = [1.0 / (2.0 * mu * softplus(b) * x0 * x0)]
    if s != 0:
        c = 1.0 if b >= 0 else sigmoid(b)
        bounds.append(1.0 / (3.0 * mu * c * abs(s) * abs(x0) ** 3))
    return min(bounds)


def convergence_constants(mu: float, a: float, x0: list[float], b: float = 0.0) -> list[float]:
    """[derived] c_l with |x_l(t)| ≈ c_l/√t as t → ∞ when μ < 0 (D = 1).

    As x → 0, Δ → δ0 = softplus(b), and x_l ≈ c_l/√t solves the system when
    Σ_{j≤l} c_j² e^{−a δ0 (l−j)} = K, K = 1/(2|μ|δ0), for every nonzero token l. Hence
    c_1² = K for the first nonzero token and c_l² = K(1 − e^{−a δ0 (l−m)}) where m is
    the previous nonzero token; zero tokens stay zero (c = 0).
    """
    d0 = softplus(b)
    K = 1.0 / (2.0 * abs(mu) * d0)
    out, prev = [], None
    for l, v in enumerate(x0):
        if v == 0:
            out.append(0.0)
            continue
        c2 = K if prev is None else K * (1.0 - math.exp(-a * d0 * (l - prev)))
        out.append(math.sqrt(c2))
        prev = l
    return out


def relaxation_exponents(mu: float, a: float, x0: list[float], b: float = 0.0) -> list[float | None]:
    """[derived] κ_l with |x_l(t)|·√t − c_l shrinking like t^(−κ_l) (D = 1, μ < 0); None for a zero token.

    With y_l = x_l² t and τ = ln t the system reads dy_l/dτ = y_l (1 − Σ_{j≤l} y_j w_lj / K),
    w_lj = e^{−a δ0 (l−j)}: linearised at the fixed point y = c², token l relaxes at rate c_l²/K =
    1 − e^{−a δ0 (l−m)} (1 for the first nonzero token), and Δ(x) = δ0 + O(x) adds corrections of
    order x ~ t^(−1/2). A token is also driven by the deviations of the tokens before it, so its
    exponent is the smallest of min(c_j²/K, 1/2) over the nonzero tokens j ≤ l. Small a δ0 makes
    it small: such a token reaches its constant only after an astronomically long time.
    """
    d0 = softplus(b)
    K = 1.0 / (2.0 * abs(mu) * d0)
    out, slowest = [], math.inf
    for c in convergence_constants(mu, a, x0, b):
        if c == 0:
            out.append(None)
            continue
        slowest = min(slowest, c * c / K, 0.5)
        out.append(slowest)
    return out


def predict_regime_1d(mu: float, s: float, x0, a: float = 1.0, b: float = 0.0) -> RegimePrediction:
    """THEORY.md section 3 table. x0: (L,) initial tokens."""
    xs = [float(v) for v in torch.as_tensor(x0, dtype=torch.float64).flatten()]
    sig = {"positive": int(mu > 0), "negative": int(mu < 0), "zero": int(mu == 0)}
    live = [v for v in xs if v != 0]
    rule = "theorem (D = 1)"
    if mu == 0 or not live:
        return RegimePrediction("static", rule, [None] * len(xs), [None] * len(xs), [], sig)
    if mu < 0:
        return RegimePrediction("convergence", rule, [None] * len(xs), [None] * len(xs),
                                convergence_constants(mu, a, xs, b), sig)
    bounds = [blowup_bound(mu, s, v, b) for v in xs]
    eff, best = [], None
    for bd in bounds:
        if bd is not None:
            best = bd if best is None else min(best, bd)
        eff.append(best)
    # s·x_l(0) < 0 for every moving token: no blow-up. A moving token with s·x_l(0) ≥ 0
    # (s = 0 included: Δ ≡ softplus(b) still gives cubic growth) blows up.
    regime = "fast_divergence" if any(s * v >= 0 for v in live) else "slow_divergence"
    return RegimePrediction(regime, rule, bounds, eff, [], sig)


def predict_regime(system: TokenSystem, x0) -> RegimePrediction:
    """Predicted regime for one set of initial tokens x0: (L, D) (or (L,) for D = 1)."""
    x0 = torch.as_tensor(x0, dtype=torch.float64)
    if system.dim == 1:
        if system.A.numel() != 1:
            # D = 1 with N > 1: μ = S_Cᵀ S_B is still a scalar, but the decay per state differs
            a = float(-system.A.mean())
        else:
            a = float(-system.A[0, 0])
        mu = float(system.io_matrix[0, 0])
        return predict_regime_1d(mu, float(system.S_Delta[0, 0]), x0.flatten(), a, float(system.b_Delta[0]))
    if x0.dim() == 1:
        x0 = x0[:, None]
    if x0.dim() != 2 or x0.shape[1] != system.dim:
        raise DataError(f"initial tokens must have shape (L, D={system.dim}), got {tuple(x0.shape)}.")
    sig = eigen_signature(system.S_B, system.S_C).as_dict()
    counts = {k: sig[k] for k in ("positive", "negative", "zero")}
    rule = "figure-6 rule (D > 1, empirical): any positive eigenvalue of M_s diverges, else converges"
    L = x0.shape[0]
    moving = x0.norm(dim=-1) > 0
    M = system.io_matrix.to(torch.float64)
    if not moving.any() or bool((M == 0).all()):
        return RegimePrediction("static", rule, [None] * L, [None] * L, [], counts)
    if regime_from_signature(counts["positive"], counts["negative"]) != "divergence":
        # M ≠ 0 here: a signature with no positive eigenvalue is the convergent case
        return RegimePrediction("convergence", rule, [None] * L, [None] * L, [], counts)
    # Fast vs slow by the 1-D analogue (heuristic): a token whose own quadratic term grows
    # (x_lᵀ M x_l > 0) and whose step size grows along it ((S_Δ x_l + b_Δ)_d > 0 for some
    # channel d) is expected to blow up.
    quad = torch.einsum("ld,de,le->l", x0, M, x0)
    pre = x0 @ system.S_Delta.to(torch.float64).T + system.b_Delta.to(torch.float64)
    fast = bool(((quad > 0) & (pre > 0).any(dim=-1) & moving).any())
    regime = "fast_divergence" if fast else "slow_divergence"
    return RegimePrediction(regime, rule + "; fast vs slow by the 1-D analogue (heuristic)",
                            [None] * L, [None] * L, [], counts)


@dataclass
class TrajectoryRegime:
    """The regime measured from a simulation, with fitted rates per token.

    loglog_slope: slope of log|x_l| against log t over the tail (≈ −1/2 in convergence);
    growth_exponent: slope of log|x_l| against log ln t over the tail (p in |x_l| ~ (ln t)^p);
    tail: the time window of the fits; relative_change: (|x_l(T)| − |x_l(0)|)/|x_l(0)|.
    regime is ``undetermined`` when the run was cut short before t_end without a blow-up
    (a blow-up decides fast divergence however the run ended); ``reason`` then says why.
    """

    regime: str
    blowup_times: list
    relative_change: list
    loglog_slope: list
    growth_exponent: list
    tail: tuple
    reason: str | None = None

    @property
    def determined(self) -> bool:
        return self.regime != UNDETERMINED

    def fitted_rates(self) -> dict:
        return {"loglog_slope": self.loglog_slope, "growth_exponent": self.growth_exponent,
                "tail": list(self.tail)}


def least_squares_slope(x: torch.Tensor, y: torch.Tensor, min_points: int = 2) -> float | None:
    """Least-squares slope of y on x (1-D tensors, computed in float64); None with fewer than
    ``min_points`` points or when x does not vary."""
    if x.numel() < min_points:
        return None
    x, y = x.to(torch.float64), y.to(torch.float64)
    xc = x - x.mean()
    den = float((xc * xc).sum())
    if den == 0:
        return None
    return float((xc * (y - y.mean())).sum()) / den


def classify_trajectory(sim: Simulation, index: int = 0, static_tol: float = 1e-6,
                        tail_fraction: float = 0.1) -> TrajectoryRegime:
    """Measure the regime of batch element ``index``: blow-up → fast_divergence; otherwise,
    when the run reached t_end, growth of some token norm → slow_divergence; decay →
    convergence; no motion → static; a run cut short without a blow-up → undetermined.

    Fits use the grid points with t ≥ tail_fraction·t_end (and t > e for the ln t fit)
    at which the token still exists.
    """
    t = sim.t
    norms = sim.norms[:, index].to(torch.float64)               # (T, L)
    valid = sim.valid[:, index]
    blow = sim.blowup_times[index]
    L = norms.shape[1]
    t_lo = tail_fraction * sim.t_end
    blowups = [float(v) if math.isfinite(float(v)) else None for v in blow]
    rel, decay, growth = [], [], []
    for l in range(L):
        n0 = float(norms[0, l])
        last = int(torch.nonzero(valid[:, l]).max())
        nT = float(norms[last, l])
        rel.append((nT - n0) / n0 if n0 > 0 else 0.0)
        sel = valid[:, l] & (t >= t_lo) & (norms[:, l] > 0)
        d_s = least_squares_slope(torch.log(t[sel]), torch.log(norms[sel, l]), 3) if n0 > 0 else None
        sel_g = sel & (t > math.e)
        g_s = least_squares_slope(torch.log(torch.log(t[sel_g])), torch.log(norms[sel_g, l]), 3) if n0 > 0 else None
        decay.append(d_s)
        growth.append(g_s)
    moving = [r for r, l in zip(rel, range(L)) if float(norms[0, l]) > 0]
    reason = None
    if any(b is not None for b in blowups):
        regime = "fast_divergence"
    elif not sim.complete:
        regime = UNDETERMINED
        reason = (f"{sim.info.get('stop_reason') or 'run cut short'}: simulated only to "
                  f"t={sim.t_end:g} without a blow-up")
    elif not moving or max(abs(r) for r in moving) <= static_tol:
        regime = "static"
    elif max(moving) > static_tol:
        regime = "slow_divergence"
    else:
        regime = "convergence"
    return TrajectoryRegime(regime, blowups, rel, decay, growth, (t_lo, sim.t_end), reason)


def position_growth(sim: Simulation, index: int = 0, tail_fraction: float = 0.1) -> dict:
    """Growth exponent p_l (|x_l| ~ (ln t)^p_l) and final norm by position, for slow divergence."""
    c = classify_trajectory(sim, index, tail_fraction=tail_fraction)
    return {"position": list(range(1, len(c.growth_exponent) + 1)), "growth_exponent": c.growth_exponent,
            "final_norm": [float(v) for v in sim.norms[-1, index]]}
