"""The checks of the main job's sections: what the paper (THEORY.md) or the code's own
contract claims, the tolerance, the measurement and the outcome.

Each function reads the JSON a section writes (so a stored run can be judged again)
and returns :class:`tokendyn.report.Check` objects. A key a section did not write
leaves its check out rather than guessing.
"""

from __future__ import annotations

from ..analysis.layer_flow import count_verdicts
from ..dynamics.trials import RELAXED
from ..report import Check

# float32 logits of a model against the reference scan, relative to the largest |logit|
LOGIT_RTOL = 1e-5
SLOPE_MEDIAN_TOL = 0.02     # convergence: median log-log slope within this of -1/2
SLOPE_RANGE = (-0.6, -0.4)  # ... and every token's slope inside this range (as tests/test_dynamics.py)
CONSTANT_TOKEN_TOL = 0.05   # each relaxed token's measured/derived convergence constant within this of 1
POSITION_SPREAD_TOL = 0.02  # slow divergence: fitted exponents of ln t across positions within this
BLOWUP_SLACK = 1e-6         # blow-up time / bound <= 1 + this (event location error, docs/regimes.md)
ND_AGREEMENT = 0.9          # D = 2: the Figure-6 rule right on converge-vs-diverge in >= this share


def core_checks(backends: dict, generation_matches: bool | None, device: str) -> list[Check]:
    """backends: {name: {"max_rel_diff_vs_reference", "max_rel_diff_vs_float64", ...}} as in core.json."""
    checks = []
    for name, r in backends.items():
        if name != "reference":
            d = r["max_rel_diff_vs_reference"]
            checks.append(Check.judged(
                f"The {name} scan computes the same logits as the reference scan (float32).",
                f"largest logit difference ≤ {LOGIT_RTOL:g} × largest |logit|",
                f"{d:.2e}", d <= LOGIT_RTOL))
    worst = max(backends, key=lambda n: backends[n]["max_rel_diff_vs_float64"])
    d64 = backends[worst]["max_rel_diff_vs_float64"]
    checks.append(Check.judged(
        "Every backend in float32 agrees with the reference scan run in float64.",
        f"largest logit difference ≤ {LOGIT_RTOL:g} × largest |logit|",
        f"worst {worst}: {d64:.2e}", d64 <= LOGIT_RTOL))
    if "triton" not in backends:
        checks.append(Check.not_run(
            "The fused Triton scan computes the same logits as the reference scan.",
            f"largest logit difference ≤ {LOGIT_RTOL:g} × largest |logit|",
            f"needs a CUDA device with triton (this run: {device}); run `tokendyn reproduce --device cuda`."))
    if generation_matches is not None:
        checks.append(Check.judged(
            "Generation through the recurrent cache gives the tokens of argmax over full forwards.",
            "identical token ids", "identical" if generation_matches else "different", generation_matches))
    return checks


def _claim(*args, **kw) -> Check:
    """A check of a claim of the paper or of THEORY.md (a failure is a finding, not a fault of the code)."""
    return Check.judged(*args, **kw, kind="claim")


def _claim_not_run(*args, **kw) -> Check:
    return Check.not_run(*args, **kw, kind="claim")


def _share(k: int, n: int) -> str:
    return f"{k}/{n}"


def one_dim_checks(d1: dict) -> list[Check]:
    """The 1-D random draws (theory.json's draws_1d): regimes, the convergence rate and constants,
    the blow-up bounds."""
    checks = []
    n = d1["draws"]
    agree = sum(r["agree"] for r in d1["table"].values())
    checks.append(_claim(
        "D = 1: the regime the theorems predict (convergence, slow or fast divergence) is the one simulated.",
        "every random draw (a disagreement would contradict a theorem)",
        f"{_share(agree, n)} draws agree", agree == n))
    s = d1.get("convergence_loglog_slope", {})
    if s.get("n"):
        ok = (abs(s["median"] + 0.5) <= SLOPE_MEDIAN_TOL
              and SLOPE_RANGE[0] <= s["min"] and s["max"] <= SLOPE_RANGE[1])
        checks.append(_claim(
            "D = 1, convergence: |x_l(t)| decays like t^(−1/2).",
            f"median log-log slope within {SLOPE_MEDIAN_TOL} of −0.5, every token in "
            f"[{SLOPE_RANGE[0]}, {SLOPE_RANGE[1]}]",
            f"median {s['median']:.4f}, range {s['min']:.3f} to {s['max']:.3f} ({s['n']} tokens)", ok))
    c, r, w = (d1.get(k, {}) for k in ("convergence_constant_ratio", "convergence_constant_relaxed",
                                         "convergence_constant_slow"))
    if r.get("n"):
        worst = max(abs(r["max"] - 1), abs(r["min"] - 1))
        note = (f"{w['n']} of {c['n']} tokens are excluded: by the derived relaxation exponent κ_l their "
                f"deviation decays like t^(−κ_l) and is above {RELAXED:.0%} at the end of the run (they lie "
                f"from {w['min']:.3f} to {w['max']:.3f}); docs/regimes.md.") if w.get("n") else ""
        checks.append(_claim(
            "D = 1, convergence: every token's |x_l(t)|·√t tends to its derived constant c_l (docs/regimes.md).",
            f"|measured/derived − 1| ≤ {CONSTANT_TOKEN_TOL} for every token whose derived remaining deviation "
            f"t_end^(−κ_l) is ≤ {RELAXED:.0%}",
            f"{r['n']} tokens from {r['min']:.4f} to {r['max']:.4f} (worst {worst:.2e})",
            worst <= CONSTANT_TOKEN_TOL, note))
    b = d1.get("blowup_time_over_bound", {})
    if b.get("n"):
        checks.append(_claim(
            "D = 1, fast divergence: every blow-up comes no later than its derived bound.",
            f"blow-up time / bound ≤ 1 (+{BLOWUP_SLACK:g} for locating the event)",
            f"largest {b['max']:.4f}, median {b['median']:.3f} ({b['n']} tokens)", b["max"] <= 1 + BLOWUP_SLACK))
    return checks


def theory_checks(data: dict) -> list[Check]:
    """data: the section's theory.json (draws_1d, figure6, random_nd, position_dependence, figure_regimes_1d)."""
    checks = []
    d1 = data.get("draws_1d")
    if d1:
        checks += one_dim_checks(d1)
    fig1 = data.get("figure_regimes_1d")
    if fig1:
        right = sum(name == got for name, got in fig1.items())
        checks.append(_claim(
            "The 1-D figure's three examples are in the regimes they illustrate.",
            "all three", ", ".join(f"{k}: {v}" for k, v in fig1.items()), right == len(fig1)))
    fig6 = data.get("figure6")
    if fig6:
        def expected(eigs):  # the paper's Figure 6: any positive eigenvalue diverges, all negative converge
            return "divergence" if max(eigs) > 0 else "convergence"

        right = [expected(r["eigenvalues"]) in r["simulated"] for r in fig6.values()]
        checks.append(_claim(
            "D = 2 (the paper's Figure 6): M with two or one positive eigenvalues → tokens diverge; "
            "both negative → tokens converge to the origin.",
            "all three cases, by simulation",
            "; ".join(f"{k}: {r['simulated']}" for k, r in fig6.items()), all(right)))
    nd = data.get("random_nd")
    if nd and nd.get("draws"):
        k, n = nd["agree_converge_vs_diverge"], nd["draws"]
        u = nd.get("undetermined", 0)
        note = (f"{u} of {n} draws stopped at the simulator's evaluation budget before the simulation decided "
                f"(undetermined) and count as disagreeing; the rule agrees with {k} of the {n - u} decided draws."
                if u else "")
        checks.append(_claim(
            f"D = {nd.get('dim', 2)}: the eigen-signature of M_s tells convergence from divergence "
            "(the paper's empirical rule).",
            f"right in ≥ {ND_AGREEMENT:.0%} of random draws",
            f"{_share(k, n)} draws; fast vs slow (a heuristic, not claimed): {nd['agree_exact']}/{n}",
            k >= ND_AGREEMENT * n, note))
    pos = data.get("position_dependence")
    if pos:
        checks += position_checks(pos)
    return checks


def position_checks(pos: list[dict]) -> list[Check]:
    """Slow divergence by position (THEORY.md section 3): the fitted exponents of ln t and the
    prefactors |x_l|/|x_1| per configuration. The paper's O((ln t)^l) is an upper bound, so what is
    checked is the measured finding: one exponent at every position, the position setting the
    prefactor only (later tokens larger at equal starts)."""
    fits, spreads, rows = [], [], []
    for c in pos:
        p = [v for v in c["growth_exponent"] if v is not None]
        if not p:
            continue
        spreads.append(max(p) - min(p))
        fits.append(c)
        rows.append(f"μ={c['mu']}, s={c['s']}, a={c['a']}: p from {min(p):.3f} to {max(p):.3f}, prefactor "
                    f"|x_l|/|x_1| = " + ", ".join(f"{r:.2f}" for r in c["ratio_to_first"]))
    if not fits:
        return []
    checks = [_claim(
        "D = 1, slow divergence: every position grows with one exponent of ln t; the paper's O((ln t)^l) is an "
        "upper bound, not a rate (THEORY.md section 3).",
        f"within each configuration the fitted exponents p_l of ln t differ by ≤ {POSITION_SPREAD_TOL}",
        "; ".join(rows), max(spreads) <= POSITION_SPREAD_TOL)]
    equal = [c for c in fits if len(set(c["x0"])) == 1]
    if equal:
        ok = all(all(b > a for a, b in zip(c["ratio_to_first"], c["ratio_to_first"][1:])) for c in equal)
        checks.append(_claim(
            "D = 1, slow divergence from equal starts: the position sets the prefactor, later tokens larger.",
            "|x_l|/|x_1| strictly increasing in l at t_end",
            "; ".join(f"μ={c['mu']}, s={c['s']}, a={c['a']}: " + ", ".join(f"{r:.2f}" for r in c["ratio_to_first"])
                      for c in equal), ok))
    return checks


def analysis_checks(summary: dict) -> list[Check]:
    """summary: the analysis section's summary ({"init"|"positive"|"negative": {"summary", "layers"}})."""
    checks = []
    pos, neg = summary.get("positive"), summary.get("negative")
    if not (pos and neg):
        return checks
    n = len(pos["layers"])
    bad_pos = [r["index"] for r in pos["layers"] if r["io_eigs_negative"] > 0]
    bad_neg = [r["index"] for r in neg["layers"] if r["io_eigs_positive"] > 0]
    checks.append(Check.judged(
        "io_constraint=\"positive\" (S_C = U, S_B = diag(λ) U, λ > 0) makes M = S_Cᵀ S_B positive "
        "semi-definite: no negative eigenvalue of M_s.",
        "every layer", f"{n - len(bad_pos)}/{n} layers" + (f" (not: {bad_pos})" if bad_pos else ""), not bad_pos))
    checks.append(Check.judged(
        "io_constraint=\"negative\" (λ < 0) makes M negative semi-definite: no positive eigenvalue of M_s.",
        "every layer", f"{n - len(bad_neg)}/{n} layers" + (f" (not: {bad_neg})" if bad_neg else ""), not bad_neg))
    p_div = sum(r["predicted_regime"] == "divergence" for r in pos["layers"])
    n_conv = sum(r["predicted_regime"] == "convergence" for r in neg["layers"])
    checks.append(Check.judged(
        "From the signature (THEORY.md section 4): the positive model is divergent-prone and the negative "
        "model convergent-prone in every layer.",
        "every layer", f"positive: {p_div}/{n} divergence; negative: {n_conv}/{n} convergence",
        p_div == n and n_conv == n))
    checks += inlayer_checks({v: [summary[v]["layers"]] for v in ("positive", "negative")},
                             "at initialisation (the analysis section's models)")
    return checks


def _layer_share(models: list[list[dict]], ok) -> tuple[int, int, list[str]]:
    """(layers where ok(row), layers in all, "seed k layer i" of the others) over several models."""
    good, bad, total = 0, [], 0
    for k, rows in enumerate(models):
        for r in rows:
            total += 1
            if ok(r):
                good += 1
            else:
                bad.append((f"model {k} " if len(models) > 1 else "") + f"layer {r['layer']}")
    return good, total, bad


def _not_list(bad: list[str], limit: int = 6) -> str:
    if not bad:
        return ""
    more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
    return f" (not: {', '.join(bad[:limit])}{more})"


def inlayer_checks(models: dict[str, list[list[dict]]], when: str) -> list[Check]:
    """The theory tested inside the layers (THEORY.md section 4): the positive setting's radial
    velocity is positive and its idealised flow diverges in every layer, the negative setting's
    the opposite.

    models: {"positive"|"negative": [one list of layer rows per model]}, each row
    ``{"layer", "radial_velocity" (median over tokens), "flow" (the flow's verdict, or absent)}``:
    the rows the analysis section and the regime monitor write. when: which models, in words.
    """
    checks = []
    rules = {"positive": (1, ("blows up", "grows"), "> 0", "diverges (blows up or grows)"),
             "negative": (-1, ("decays",), "< 0", "decays")}
    for setting, (sign, verdicts, rv_words, flow_words) in rules.items():
        rows = models.get(setting)
        if not rows:
            continue
        k_rv, n, bad_rv = _layer_share(rows, lambda r, sign=sign: r["radial_velocity"] * sign > 0)
        rvs = [r["radial_velocity"] for m in rows for r in m]
        checks.append(_claim(
            f"{setting.capitalize()} S_Cᵀ S_B, {when}: the radial velocity of each layer's scan input under its own "
            f"scan (no D, no gate) is {rv_words}, as the flow of THEORY.md section 2 predicts.",
            f"median over tokens {rv_words} in every layer",
            f"{k_rv}/{n} layers; medians from {min(rvs):+.3g} to {max(rvs):+.3g}" + _not_list(bad_rv), k_rv == n))
        flows = [r for m in rows for r in m if r.get("flow")]
        if not flows:
            continue
        k_f, n_f, bad_f = _layer_share([[r for r in m if r.get("flow")] for m in rows],
                                       lambda r, verdicts=verdicts: r["flow"] in verdicts)
        counts = count_verdicts(r["flow"] for r in flows)
        t_end = flows[0].get("flow_time", 5.0)
        checks.append(_claim(
            f"{setting.capitalize()} S_Cᵀ S_B, {when}: the idealised flow on each layer's own parameters, from "
            f"its real tokens, {flow_words} (THEORY.md sections 2-4).",
            f"every layer, by t = {t_end:g}",
            f"{k_f}/{n_f} layers; " + ", ".join(f"{v}: {c}" for v, c in counts.items()) + _not_list(bad_f),
            k_f == n_f))
    return checks


def trained_inlayer_checks(doc: dict | None, when: str, how: str = "") -> list[Check]:
    """:func:`inlayer_checks` on the regime monitor's last records of a grid's positive and negative
    runs (lm_scenarios.json's ``settings.<s>.monitor_final``); "not run" where the grid is absent or
    older than those records."""
    finals = {s: (doc or {}).get("settings", {}).get(s, {}).get("monitor_final") for s in ("positive", "negative")}
    if all(f and isinstance(f[0], list) and f[0] and "radial_velocity" in f[0][0] for f in finals.values()):
        return inlayer_checks(finals, when)
    return [_claim_not_run(f"Positive and negative S_Cᵀ S_B, {when}: the radial velocity and the idealised flow "
                          "of every layer follow the sign of M.",
                          "every layer of every seed",
                          "the grid holds no end-of-training in-layer records (it predates them); " + how)]
