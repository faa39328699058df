"""The [derived] Mamba-2 (SSD) rule for d > 1 against simulation (docs/THEORY.md, "Mamba-2 (SSD)").

As :func:`tokendyn.dynamics.trials.fig6_agreement` does for Mamba-1: draw layers, predict
from the signatures of M_s and V_s (:func:`.ssd_regimes.ssd_signatures`), simulate the idealised
flow from random tokens, measure the growth or decay of the token norms, and compare.

Draws (:func:`rule_cases`): layers built with every M_s^{(g)} and V_s^{(k)} definite of chosen
signs (:func:`definite_ssd_system`), all heads pushing one way (``converge``, ``diverge``) or the
two heads of a layer pushing opposite ways (``mixed_heads``); and plain Gaussian layers
(``gaussian``), whose forms are mostly indefinite. Only the definite layers carry a claim.
"""

from __future__ import annotations

import math
import statistics

import torch

from ..errors import ConfigError
from .integrate import simulate
from .regimes import UNDETERMINED, classify_trajectory
from .ssd_regimes import SSD_PREDICTIONS, ssd_signatures
from .ssd_system import SSDSystem

# the regimes classify_trajectory reports, as the rule names them
_MEASURED = {"convergence": "convergence", "slow_divergence": "divergence", "fast_divergence": "divergence"}


def _definite_core(n: int, sign: int, skew: float, g: torch.Generator) -> torch.Tensor:
    """R + S: (n, n), R symmetric with eigenvalues sign·U(0.5, 1.5) in a random basis, S skew
    (it changes M but not M_s, so the draws also test that only the symmetric part matters)."""
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = sign * (0.5 + torch.rand(n, generator=g, dtype=torch.float64))
    Z = torch.randn(n, n, generator=g, dtype=torch.float64)
    return Q @ torch.diag(lam) @ Q.T + skew * (Z - Z.T) / 2


def definite_ssd_system(dim: int, heads: int = 1, groups: int = 1, state: int | None = None,
                        head_dim: int | None = None, m_signs=(1,), v_signs=(1,), seed: int = 0,
                        skew: float = 0.5, bias: bool = True) -> SSDSystem:
    """A layer whose M_s^{(g)} has the definite sign m_signs[g] and V_s^{(k)} the sign v_signs[k].

    W_C^{(g)}: (N, d) Gaussian, full column rank almost surely; W_B^{(g)} = (R + S) W_C^{(g)}, so
    M_g = W_Cᵀ (R + S) W_C and M_s = W_Cᵀ R W_C is definite of R's sign. Likewise W_x^{(k)}: (P, d)
    Gaussian and W_out^{(k)} = W_x^{(k)ᵀ} (R' + S'), so V_k = W_xᵀ (R' + S') W_x. Needs N ≥ d and
    P ≥ d (state and head_dim default to d). W_dt Gaussian of variance 1/d, b_dt ~ N(0, 0.3²)
    when ``bias``, a ~ U(0.5, 1.5).
    """
    N = dim if state is None else state
    P = dim if head_dim is None else head_dim
    if N < dim or P < dim:
        raise ConfigError(f"a definite M_s needs state ≥ d and a definite V_s head_dim ≥ d, "
                          f"got d={dim}, N={N}, P={P}.")
    if len(m_signs) != groups or len(v_signs) != heads or any(s not in (1, -1) for s in (*m_signs, *v_signs)):
        raise ConfigError(f"give one sign ±1 per group ({groups}) in m_signs and per head ({heads}) in v_signs.")
    g = torch.Generator().manual_seed(seed)
    W_C = torch.randn(groups, N, dim, generator=g, dtype=torch.float64) / math.sqrt(N)
    W_B = torch.stack([_definite_core(N, m_signs[i], skew, g) @ W_C[i] for i in range(groups)])
    W_x = torch.randn(heads, P, dim, generator=g, dtype=torch.float64) / math.sqrt(P)
    W_out = torch.stack([W_x[k].T @ _definite_core(P, v_signs[k], skew, g) for k in range(heads)], dim=1)
    W_dt = torch.randn(heads, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    b_dt = torch.randn(heads, generator=g, dtype=torch.float64) * 0.3 if bias else torch.zeros(heads,
                                                                                                dtype=torch.float64)
    a = 0.5 + torch.rand(heads, generator=g, dtype=torch.float64)
    return SSDSystem(W_x, W_B, W_C, W_dt, b_dt, a, W_out)


def case_system(case: str, dim: int, heads: int, groups: int, seed: int) -> SSDSystem:
    """One draw of a case: ``converge``, ``diverge``, ``mixed_heads`` (needs H ≥ 2) or ``gaussian``.

    The signs of M_s are random per group; each head's V_s sign follows from the push it must have.
    """
    if case == "gaussian":
        return SSDSystem.random(dim, heads, groups=groups, seed=seed, bias=True)
    g = torch.Generator().manual_seed(seed + 7_919)      # the signs, apart from the weights' stream
    m = [1 if torch.rand((), generator=g) < 0.5 else -1 for _ in range(groups)]
    if case == "converge":
        push = [-1] * heads
    elif case == "diverge":
        push = [1] * heads
    elif case == "mixed_heads":
        if heads < 2:
            raise ConfigError("the mixed_heads case needs at least two heads.")
        push = [1 if k % 2 == 0 else -1 for k in range(heads)]
    else:
        raise ConfigError(f"unknown case {case!r}; choose converge, diverge, mixed_heads or gaussian.")
    v = [m[k // (heads // groups)] * push[k] for k in range(heads)]
    return definite_ssd_system(dim, heads, groups, m_signs=m, v_signs=v, seed=seed)


def rule_cases(dims=(2, 3), head_counts=(1, 2), cases=("converge", "diverge", "mixed_heads", "gaussian")):
    """(case, d, H, G) for every d, H, G ∈ {1, H} and case (mixed_heads only where H ≥ 2)."""
    out = []
    for d in dims:
        for H in head_counts:
            for G in sorted({1, H}):
                out += [(c, d, H, G) for c in cases if c != "mixed_heads" or H >= 2]
    return out


def measure_draw(system: SSDSystem, x0: torch.Tensor, t_end: float, max_evals: int) -> dict:
    """Simulate one draw from x0: (L, d) and measure its token norms."""
    sim = simulate(system, x0, t_end, n_points=30, rtol=1e-7, atol=1e-10, max_evals=max_evals,
                   stop_at_blowup=True)
    got = classify_trajectory(sim)
    n0 = sim.norms[0, 0]
    last = [int(torch.nonzero(sim.valid[:, 0, l]).max()) for l in range(x0.shape[0])]
    nT = torch.stack([sim.norms[i, 0, l] for l, i in enumerate(last)])
    blown = [b is not None for b in got.blowup_times]
    return {"simulated": got.regime, "measured": _MEASURED.get(got.regime, got.regime),
            # a token that blew up grew; the others are compared at the last time they exist
            "tokens_grew": sum(bool(nT[l] > n0[l]) or blown[l] for l in range(len(last))),
            "tokens_decayed": sum(bool(nT[l] < n0[l]) and not blown[l] for l in range(len(last))),
            # the run stops at the first blow-up (then every token from the first hit on is frozen)
            "blowup": any(blown), "t_stop": min([b for b in got.blowup_times if b is not None], default=sim.t_end),
            "first_token_loglog_slope": got.loglog_slope[0], "reason": got.reason}


def check_ssd_rule(n: int = 5, seed: int = 0, tokens: int = 5, t_end: float = 1e3, cases=None,
                   max_evals: int = 20_000) -> dict:
    """Predicted vs simulated regime of ``n`` draws per (case, d, H, G) of :func:`rule_cases`.

    Each draw: a layer, tokens x0 ~ N(0, I)^{tokens×d}, the flow simulated to ``t_end`` (stopped
    at the first blow-up). ``agree`` is prediction == measured for a convergence or divergence
    prediction, None for an indefinite one (no claim) and for a run cut short by ``max_evals``
    (``undetermined``). Returns per draw the prediction, the per-head predictions, the measurement
    and the agreement; per prediction a summary (draws, outcomes, agree / disagree / undetermined,
    tokens that grew or decayed); and the first token's log-log slope over the last decade in the
    convergent draws ([derived]: |h_1| = Θ(t^(−1/2))).
    """
    cases = rule_cases() if cases is None else cases
    g = torch.Generator().manual_seed(seed)
    rows = []
    for ci, (case, d, H, G) in enumerate(cases):
        for i in range(n):
            draw_seed = seed * 1_000_003 + ci * 1_000 + i
            system = case_system(case, d, H, G, draw_seed)
            sig = ssd_signatures(system)
            x0 = torch.randn(tokens, d, generator=g, dtype=torch.float64)
            row = {"case": case, "dim": d, "heads": H, "groups": G, "seed": draw_seed,
                   "prediction": sig.prediction, "head_predictions": sig.head_predictions,
                   **measure_draw(system, x0, t_end, max_evals)}
            # no claim for an indefinite layer; a run cut short decides nothing
            decided = row["prediction"] != "indefinite" and row["measured"] != UNDETERMINED
            row["agree"] = row["measured"] == row["prediction"] if decided else None
            rows.append(row)
    summary = {}
    for pred in SSD_PREDICTIONS:
        sel = [r for r in rows if r["prediction"] == pred]
        outcomes = {}
        for r in sel:
            outcomes[r["measured"]] = outcomes.get(r["measured"], 0) + 1
        entry = {"draws": len(sel), "measured": outcomes, "tokens": tokens * len(sel),
                 "tokens_grew": sum(r["tokens_grew"] for r in sel),
                 "tokens_decayed": sum(r["tokens_decayed"] for r in sel)}
        if pred != "indefinite":
            entry.update(agree=sum(r["agree"] is True for r in sel), disagree=sum(r["agree"] is False for r in sel),
                         undetermined=sum(r["measured"] == UNDETERMINED for r in sel))
        summary[pred] = entry
    slopes = [r["first_token_loglog_slope"] for r in rows
              if r["prediction"] == "convergence" and r["measured"] == "convergence"
              and r["first_token_loglog_slope"] is not None]
    return {"draws": len(rows), "per_case": n, "tokens": tokens, "t_end": t_end, "seed": seed,
            "max_evals": max_evals, "undetermined": sum(r["simulated"] == UNDETERMINED for r in rows),
            "summary": summary,
            "convergence_first_token_loglog_slope": (
                {"n": len(slopes), "min": min(slopes), "median": statistics.median(slopes), "max": max(slopes)}
                if slopes else {"n": 0}),
            "rows": rows}
