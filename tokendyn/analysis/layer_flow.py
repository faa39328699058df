"""The theory tested inside a real layer (THEORY.md section 4, "Testing the theory inside a real
model"): two quantities computed from a layer's own parameters and its own scan input.

- The **radial velocity** of token l, ⟨u_l, y_l⟩ / |u_l|², where u (the scan input: in_proj's x
  half after the causal conv and SiLU) goes through the layer's own scan without the skip term D
  and without the gate. It is the idealised flow's d ln|u_l|/dt at the layer's real tokens: its
  sign should follow the signature of M = S_Cᵀ S_B.
- The **idealised flow** of THEORY.md section 2, run on the layer's parameters (S_B, S_C, S_Δ,
  b_Δ, A) from the layer's real tokens: the norm ratio |u_l(t)| / |u_l(0)| at a stated time,
  and the time of the first blow-up if there is one.

Neither quantity looks at the residual stream: its norm grows in every pre-norm model whatever
the sign of M, because the residual update is nearly orthogonal to the stream, so it is no test
of the theory. The scan's vector field is :func:`tokendyn.dynamics.vector_field` and the
integration is :func:`tokendyn.dynamics.integrate.simulate`, the simulator's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..dynamics.integrate import FlowSystem, simulate
from .forms import form_of

FLOW_T_END = 5.0          # the stated time of the flow's norm ratio (units of the flow's time)
FLOW_TOKENS = 256         # the flow runs on the first tokens only (exact for them: the flow is causal)
FLOW_MAX_EVALS = 2000     # vector-field evaluations per layer; a flow that spends them is "undetermined"
FLOW_POINTS = 61          # output grid of the flow's norm curves: 0, then log-spaced from t_end/1000 to t_end
# a flow counts as growing or decaying when its norm ratio at t_end leaves 1 by more than this
FLOW_NEUTRAL = 0.02
# blow-up test of the simulator: e-folding time below this fraction of t (module tokendyn.dynamics.integrate);
# the blow-up time is then located within FLOW_BLOWUP_RTOL·t/3, ample for a verdict
FLOW_BLOWUP_RTOL = 1e-3
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def layer_system(params: dict) -> FlowSystem:
    """The idealised system of one layer (float64, CPU) from ``mixer.io_parameters()``, as the
    parameters' form defines it (:mod:`tokendyn.analysis.forms`): a ``TokenSystem`` from S_B, S_C
    (N, D), S_Delta (D, D), b_Delta (D,), A (D, N) for ``s6``, an ``SSDSystem`` for ``ssd``."""
    return form_of(params).system(params)


def layer_tokens(params: dict, internals) -> torch.Tensor:
    """The tokens the layer's flow moves, batch element 0: (L, dim) — the scan input x (``s6``) or
    the mixer's input h (``ssd``)."""
    return form_of(params).tokens(internals)


def radial_velocity(system: FlowSystem, u: torch.Tensor) -> torch.Tensor:
    """⟨u_l, y_l⟩ / |u_l|² per token, y = the layer's scan of u without D and gate (THEORY.md
    section 4), which is the idealised flow's vector field at u (section 2).

    u: (L, D) the scan input of one sequence -> (L,) float64 on the CPU; 0 for a zero token. The scan
    runs in float64 on u's device (one scan: cheap on a GPU, where the regime monitor calls it).
    """
    u = u.detach().to(torch.float64)
    y = system.vector_field(u[None])[0]
    sq = (u * u).sum(-1)
    return torch.where(sq > 0, (u * y).sum(-1) / sq.clamp_min(1e-300), torch.zeros_like(sq)).cpu()


def distribution(values: torch.Tensor) -> dict:
    """Summary of a 1-D sample: mean, std, min, max, the quantiles of :data:`QUANTILES` (q10 …
    q90), and the share of positive values."""
    v = values.detach().to(torch.float64).flatten()
    q = torch.quantile(v, torch.tensor(QUANTILES, dtype=torch.float64))
    out = {"n": int(v.numel()), "mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 0.0,
           "min": float(v.min()), "max": float(v.max()), "positive_share": float((v > 0).double().mean())}
    out.update({f"q{round(p * 100)}": float(x) for p, x in zip(QUANTILES, q)})
    out["median"] = out.pop("q50")
    return out


@dataclass
class LayerFlow:
    """The idealised flow of one layer from its real tokens.

    t: (T,) times from 0; ratio: (T,) geometric mean over the integrated tokens of
    |u_l(t)| / |u_l(0)| (zero tokens left out), up to the end of the run; token_ratio: (tokens,)
    each token's ratio at t_end (None when the flow blew up or stopped before t_end);
    blowup_time: the first blow-up, or None; stop_reason: why a run ended before t_end without a
    blow-up (its budget), else None.
    """

    t: torch.Tensor
    ratio: torch.Tensor
    token_ratio: torch.Tensor | None
    blowup_time: float | None
    t_end: float
    tokens: int
    n_evals: int
    stop_reason: str | None

    @property
    def verdict(self) -> str:
        """"blows up", "grows", "decays", "stays" (within :data:`FLOW_NEUTRAL` of 1 at t_end) or
        "undetermined" (the budget ran out first)."""
        if self.blowup_time is not None:
            return "blows up"
        if self.token_ratio is None:
            return "undetermined"
        r = float(self.ratio[-1])
        if r > 1 + FLOW_NEUTRAL:
            return "grows"
        if r < 1 - FLOW_NEUTRAL:
            return "decays"
        return "stays"

    @property
    def diverges(self) -> bool:
        return self.verdict in ("blows up", "grows")

    def as_dict(self) -> dict:
        """JSON-able (docs/analysis.md)."""
        tr = self.token_ratio
        return {"t_end": self.t_end, "tokens": self.tokens, "verdict": self.verdict,
                "blowup_time": self.blowup_time,
                "ratio_at_t_end": float(self.ratio[-1]) if tr is not None else None,
                "token_ratio_range": [float(tr.min()), float(tr.max())] if tr is not None else None,
                "n_evals": self.n_evals, "stop_reason": self.stop_reason,
                "t": [float(x) for x in self.t], "ratio": [float(x) for x in self.ratio]}


def idealised_flow(system: FlowSystem, u: torch.Tensor, t_end: float = FLOW_T_END, tokens: int = FLOW_TOKENS,
                   max_evals: int = FLOW_MAX_EVALS, n_points: int = FLOW_POINTS,
                   time_limit: float | None = None, rtol: float = 1e-6,
                   blowup_rtol: float = FLOW_BLOWUP_RTOL, device: torch.device | str | None = None) -> LayerFlow:
    """Run the idealised flow (THEORY.md section 2) from the first ``tokens`` tokens of u.

    u: (L, D) the layer's scan input. The flow is causal (token l moves by tokens 1..l only), so
    its first tokens follow exactly the flow of the whole sequence. The explicit RK45 solver is
    used (the stiff solver's dense Jacobian of tokens·D unknowns would not fit), and the run stops
    at the first blow-up: tokens after a blown-up one have no solution past it. rtol: the solver's
    relative tolerance (atol = rtol/1000); blowup_rtol: the simulator's blow-up test, which places
    the blow-up time within blowup_rtol·t/3. device: where each evaluation's scan runs (None:
    u's device; a GPU does a real layer's flow about ten times faster than a CPU).
    """
    device = u.device if device is None else device
    u0 = u.detach().to("cpu", torch.float64)[:tokens]
    sim = simulate(system, u0[None], t_end=t_end, n_points=n_points, t_first=t_end * 1e-3, method="RK45",
                   rtol=rtol, atol=rtol * 1e-3, blowup_rtol=blowup_rtol, max_evals=max_evals, time_limit=time_limit,
                   stop_at_blowup=True, device=device)
    norms = sim.norms[:, 0]                                      # (T, tokens)
    start = norms[0]
    keep = start > 0
    log_ratio = (norms[:, keep].clamp_min(1e-300).log() - start[keep].log())
    ratio = log_ratio.mean(-1).exp() if keep.any() else torch.ones(norms.shape[0], dtype=torch.float64)
    blown = sim.blowup_times[0]
    blowup = float(blown.min()) if bool(torch.isfinite(blown).any()) else None
    reached = blowup is None and sim.complete
    return LayerFlow(t=sim.t, ratio=ratio, token_ratio=(norms[-1][keep] / start[keep]) if reached else None,
                     blowup_time=blowup, t_end=float(t_end), tokens=int(u0.shape[0]), n_evals=sim.n_evals,
                     stop_reason=None if (reached or blowup is not None) else sim.info.get("stop_reason"))


@dataclass
class LayerTheory:
    """The in-layer quantities of one layer: the radial-velocity sample (L,) of the sequence and
    its idealised flow (None when not run)."""

    index: int
    radial_velocity: torch.Tensor
    flow: LayerFlow | None

    def as_dict(self) -> dict:
        return {"radial_velocity": distribution(self.radial_velocity),
                "flow": self.flow.as_dict() if self.flow is not None else None}


def layer_theory(params: dict, u: torch.Tensor, index: int = 0, flow: bool = True, **flow_kw) -> LayerTheory:
    """Radial velocity of every token of u ((L, D), one sequence's scan input) and, unless
    ``flow`` is False, the idealised flow from its first tokens (keywords of :func:`idealised_flow`)."""
    system = layer_system(params)
    rv = radial_velocity(system, u)
    return LayerTheory(index, rv, idealised_flow(system, u, **flow_kw) if flow else None)


def model_theory(io_params: list[dict], internals, flow: bool = True, **flow_kw) -> list[LayerTheory]:
    """:func:`layer_theory` of every layer, on batch element 0 of one forward pass.

    io_params: ``io_parameters()`` of each mixer; internals: the forward's MixerInternals, from
    which each layer's form takes its tokens (:func:`layer_tokens`: the scan input x of a Mamba-1
    layer, the mixer input h of a Mamba-2 one).
    """
    return [layer_theory(p, layer_tokens(p, m), i, flow=flow, **flow_kw)
            for i, (p, m) in enumerate(zip(io_params, internals))]


def count_verdicts(verdicts) -> dict[str, int]:
    """{verdict: count} in first-seen order; None (a flow not run) counts as "not run"."""
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v or "not run"] = counts.get(v or "not run", 0) + 1
    return counts


def expected_sign(predicted_regime: str) -> int:
    """The sign the radial velocity should have in a predicted regime (THEORY.md section 4):
    +1 for divergence, −1 for convergence, 0 for a static layer (M = 0)."""
    return {"divergence": 1, "convergence": -1}.get(predicted_regime, 0)
