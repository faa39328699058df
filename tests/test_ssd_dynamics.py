"""The Mamba-2 (SSD) token flow (docs/THEORY.md, "Mamba-2 (SSD)"): the scan field against the
explicit double sum, the 1-D reduction to the paper's system, the [derived] d > 1 rule's
signatures and first-token formula, and the rule against simulation."""

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tokendyn.dynamics import (
    SSDSystem,
    TokenSystem,
    classify_trajectory,
    first_token_radial_velocity,
    predict_regime_1d,
    radial_velocity,
    simulate,
    ssd_signatures,
    ssd_vector_field,
    ssd_vector_field_naive,
    vector_field,
)
from tokendyn.dynamics.integrate import SMALL_SYSTEM_TERMS, Integrator, time_grid
from tokendyn.dynamics.ssd_regimes import head_prediction, layer_prediction
from tokendyn.dynamics.ssd_trials import (
    case_system,
    check_ssd_rule,
    definite_ssd_system,
    measure_draw,
    rule_cases,
)
from tokendyn.dynamics.trials import t_end_for
from tokendyn.errors import ConfigError, DataError

BACKENDS = ("reference", "chunked")


@st.composite
def layer_shapes(draw):
    """(d, H, P, G, N) with G dividing H."""
    heads = draw(st.sampled_from([1, 2, 4]))
    groups = draw(st.sampled_from([g for g in (1, 2, 4) if heads % g == 0]))
    return draw(st.integers(1, 4)), heads, draw(st.integers(1, 3)), groups, draw(st.integers(1, 4))


# ----- the field: one scan and out_proj against the explicit double sum -------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@given(shape=layer_shapes(), L=st.integers(1, 12), batch=st.integers(1, 2), bias=st.booleans(),
       chunk=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=20, deadline=None)
def test_scan_field_equals_double_sum_float64(backend, shape, L, batch, bias, chunk, seed):
    d, H, P, G, N = shape
    system = SSDSystem.random(d, H, P, G, N, seed=seed, bias=bias)
    h = torch.randn(batch, L, d, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    fast = ssd_vector_field(system, h, backend, chunk_size=chunk if backend == "chunked" else None)
    oracle = ssd_vector_field_naive(system, h)
    assert fast.dtype == torch.float64
    assert torch.allclose(fast, oracle, rtol=1e-10, atol=1e-12 * (1 + float(oracle.abs().max())))


@pytest.mark.parametrize("backend", BACKENDS)
def test_scan_field_float32_against_float64_oracle(backend):
    system = SSDSystem.random(6, 4, 3, 2, 5, seed=3, bias=True)
    h = torch.randn(2, 70, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    oracle = ssd_vector_field_naive(system, h)
    got = ssd_vector_field(system, h.float(), backend)
    assert got.dtype == torch.float32
    assert float((got.double() - oracle).abs().max() / oracle.abs().max()) < 1e-4


def test_the_double_sum_is_the_written_formula():
    # dh_l/dt = Σ_k W_out^(k) Σ_{j≤l} (h_lᵀ M_g(k) h_j) dt_jk exp(−a_k Σ_{i=j+1..l} dt_ik) W_x^(k) h_j, term by term
    system = SSDSystem.random(3, 4, 2, 2, 2, seed=9, bias=True)
    h = torch.randn(1, 5, 3, generator=torch.Generator().manual_seed(10), dtype=torch.float64)[0]
    dt = torch.nn.functional.softplus(h @ system.W_dt.T + system.b_dt)
    expect = torch.zeros_like(h)
    for l in range(5):
        for k in range(4):
            g = k // 2
            M = system.W_C[g].T @ system.W_B[g]
            for j in range(l + 1):
                decay = math.exp(-float(system.a[k]) * float(dt[j + 1:l + 1, k].sum()))
                expect[l] += (h[l] @ M @ h[j]) * dt[j, k] * decay * (system.W_out[:, k, :] @ (system.W_x[k] @ h[j]))
    assert torch.allclose(ssd_vector_field_naive(system, h[None])[0], expect, rtol=1e-12, atol=1e-14)


# ----- the 1-D reduction: μ = w_out·w_x·w_C·w_B, s = w_dt ------------------------------------------
signed = st.tuples(st.sampled_from([-1.0, 1.0]), st.floats(0.1, 2.0)).map(lambda p: p[0] * p[1])


@given(w=st.tuples(signed, signed, signed, signed, signed), a=st.floats(0.1, 3.0),
       b=st.one_of(st.just(0.0), st.floats(-1.0, 1.0)), L=st.integers(1, 10), seed=st.integers(0, 2**31 - 1))
@example(w=(-1.0, -0.5, 2.0, 1.5, -0.3), a=0.5, b=0.0, L=6, seed=0)     # three negative factors: μ < 0
@settings(max_examples=30, deadline=None)
def test_one_dim_ssd_flow_is_the_papers_system(w, a, b, L, seed):
    w_x, w_B, w_C, w_dt, w_out = w
    ssd = SSDSystem.one_dim(w_x, w_B, w_C, w_dt, a, w_out, b_dt=b)
    paper = TokenSystem.one_dim(w_out * w_x * w_C * w_B, w_dt, a, b)
    x = torch.randn(2, L, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1.5
    expect = vector_field(paper, x)
    for backend in BACKENDS:
        got = ssd_vector_field(ssd, x, backend, chunk_size=3 if backend == "chunked" else None)
        # every term of the 1-D sum has the sign of μ·x_l: no cancellation, so relative per token
        assert ((got - expect).abs() <= 1e-12 * expect.abs()).all()
    assert ((ssd_vector_field_naive(ssd, x) - expect).abs() <= 1e-12 * expect.abs()).all()


@pytest.mark.parametrize("w, x0", [
    ((1.0, -0.8, 1.2, 1.0, 0.9), [0.8, -1.2, 0.5]),          # μ < 0: convergence
    ((-1.0, -0.8, 1.2, 1.5, 0.9), [0.6, -0.3, 0.9]),         # μ > 0, s·x_1 > 0: fast divergence
    ((-1.0, 0.7, -1.1, -1.0, 1.0), [0.7, 1.0, 0.4]),         # μ > 0, s·x_l < 0 for all l: slow divergence
])
def test_one_dim_regimes_by_simulation(w, x0):
    w_x, w_B, w_C, w_dt, w_out = w
    mu = w_out * w_x * w_C * w_B
    pred = predict_regime_1d(mu, w_dt, x0, 1.0)
    sim = simulate(SSDSystem.one_dim(w_x, w_B, w_C, w_dt, 1.0, w_out), torch.tensor(x0, dtype=torch.float64),
                   t_end_for(pred), n_points=30, rtol=1e-7, atol=1e-10)
    got = classify_trajectory(sim)
    assert got.regime == pred.regime
    if pred.regime == "convergence":
        assert all(v < 0 for v in got.relative_change)
    else:
        assert all(v > 0 for v in got.relative_change)
    assert any(t is not None for t in got.blowup_times) == (pred.regime == "fast_divergence")


def test_simulating_the_1d_ssd_system_tracks_the_paper_system():
    ssd = SSDSystem.one_dim(-0.7, 1.1, 0.9, 1.3, 0.6, -1.2)
    paper = TokenSystem.one_dim(-1.2 * -0.7 * 0.9 * 1.1, 1.3, 0.6)
    x0 = torch.tensor([-0.5, 0.4, -0.9, 0.2], dtype=torch.float64)
    a = simulate(ssd, x0, 5.0, n_points=10, rtol=1e-9, atol=1e-12)
    b = simulate(paper, x0, 5.0, n_points=10, rtol=1e-9, atol=1e-12)
    assert isinstance(a.system, SSDSystem)
    assert torch.allclose(a.x, b.x, rtol=1e-7, atol=1e-9)


def test_integrator_takes_the_scan_for_large_systems():
    system = SSDSystem.random(2, 2, 2, 1, 4, seed=5)
    L = 70                                                             # L²·d·N above the small-system cut
    assert L * L * 2 * 4 > SMALL_SYSTEM_TERMS
    h = torch.randn(1, L, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 0.3
    integ = Integrator(system, h, time_grid(1.0, 5), method="RK45", rtol=1e-6, atol=1e-9, dtype=torch.float64,
                       backend="auto", blowup_rtol=1e-6, blowup_norm=1e12, max_evals=None, time_limit=None)
    assert torch.allclose(integ.field(0.0, h), ssd_vector_field_naive(system, h), rtol=1e-10, atol=1e-13)


# ----- the d > 1 rule: signatures, the first token's radial velocity -----------------------------
@pytest.mark.parametrize("d, H, P, G, N", [(3, 2, 3, 1, 3), (6, 4, 2, 2, 2), (5, 1, 4, 1, 1), (2, 2, 2, 2, 4)])
def test_radial_velocity_of_the_first_token_is_the_derived_formula(d, H, P, G, N):
    system = SSDSystem.random(d, H, P, G, N, seed=d * H, bias=True)
    h = torch.randn(4, 6, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = radial_velocity(system, h)[:, 0]
    assert torch.allclose(got, first_token_radial_velocity(system, h[:, 0]), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_aligned_heads_move_every_token_monotonically(sign):
    """[derived] V_k = c_k M_g(k) with every c_k of one sign: each term of ⟨h_l, dh_l/dt⟩ is
    c_k · weight · (h_lᵀ M h_j)² ≥ 0 (times the sign), so every token's norm is monotone, even with
    rank M = N < d; the same Gaussian layer without the alignment moves tokens both ways."""
    base = SSDSystem.random(5, 4, 2, 2, 2, seed=21, bias=True)
    c = sign * (0.5 + torch.rand(4, generator=torch.Generator().manual_seed(22), dtype=torch.float64))
    groups = [base.group_of(k) for k in range(4)]
    W_x = base.W_B[groups]                                             # (H, P = N, d)
    W_out = torch.stack([c[k] * base.W_C[g].T for k, g in enumerate(groups)], dim=1)   # (d, H, N)
    aligned = SSDSystem(W_x, base.W_B, base.W_C, base.W_dt, base.b_dt, base.a, W_out)
    assert torch.allclose(aligned.head_matrices, c[:, None, None] * aligned.io_matrices[groups])
    h = torch.randn(64, 7, 5, generator=torch.Generator().manual_seed(23), dtype=torch.float64)
    v = radial_velocity(aligned, h)
    assert (sign * v >= -1e-12).all() and (sign * v > 0).float().mean() > 0.99
    w = radial_velocity(base, h)
    assert (w > 0).any() and (w < 0).any()


@pytest.mark.parametrize("d, H, P, G, N", [(6, 4, 2, 2, 2), (3, 2, 3, 1, 3), (8, 2, 3, 2, 1)])
def test_signatures_count_the_dense_eigenvalues(d, H, P, G, N):
    # d > 2N and d > 2P: the counts come from the 2N×2N and 2P×2P problems
    system = SSDSystem.random(d, H, P, G, N, seed=11)
    sig = ssd_signatures(system)

    def counts(A):
        ev = torch.linalg.eigvalsh((A + A.T) / 2)
        tol = 1e-8 * float(ev.abs().max())
        return int((ev > tol).sum()), int((ev < -tol).sum())

    for g in range(G):
        assert (sig.groups[g].positive, sig.groups[g].negative) == counts(system.io_matrices[g])
    for k in range(H):
        assert (sig.heads[k].positive, sig.heads[k].negative) == counts(system.head_matrices[k])
    # rank M ≤ N < d: never definite, so the rule makes no claim
    assert sig.prediction == "indefinite"


def test_rule_table():
    assert head_prediction(1, 1) == head_prediction(-1, -1) == "divergence"
    assert head_prediction(1, -1) == head_prediction(-1, 1) == "convergence"
    assert head_prediction(0, 1) == head_prediction(-1, 0) == "indefinite"
    assert layer_prediction(["convergence", "convergence"]) == "convergence"
    assert layer_prediction(["divergence", "convergence"]) == "indefinite"


@pytest.mark.parametrize("m_signs, v_signs, expect", [
    ((1,), (1, 1), "divergence"), ((-1,), (-1, -1), "divergence"),
    ((1,), (-1, -1), "convergence"), ((1, -1), (-1, 1), "convergence"),
    ((1,), (1, -1), "indefinite"),
])
def test_definite_construction_and_prediction(m_signs, v_signs, expect):
    system = definite_ssd_system(3, 2, len(m_signs), m_signs=m_signs, v_signs=v_signs, seed=2)
    sig = ssd_signatures(system)
    for g, s in enumerate(m_signs):
        assert (sig.groups[g].positive if s > 0 else sig.groups[g].negative) == 3
        M = system.io_matrices[g]
        assert float((M - M.T).abs().max()) > 1e-3                 # M itself is not symmetric
    for k, s in enumerate(v_signs):
        assert (sig.heads[k].positive if s > 0 else sig.heads[k].negative) == 3
    assert sig.prediction == expect
    flipped = {"divergence": "convergence", "convergence": "divergence", "indefinite": "indefinite"}
    assert ssd_signatures(system.flipped_output()).prediction == flipped[expect]


# ----- the rule against simulation ---------------------------------------------------------------
@pytest.mark.parametrize("case, d, H, G", [("converge", 2, 1, 1), ("diverge", 3, 2, 1), ("converge", 3, 2, 2),
                                           ("diverge", 2, 2, 2)])
def test_rule_agrees_with_simulation_and_flips_with_V(case, d, H, G):
    """The measured regime follows the prediction, and negating W_out (every V_k) flips both: a
    measurement that did not depend on the sign of V would fail one of the two."""
    system = case_system(case, d, H, G, seed=d * 10 + H + G)
    x0 = torch.randn(4, d, generator=torch.Generator().manual_seed(d + H), dtype=torch.float64)
    outcomes = []
    for s in (system, system.flipped_output()):
        pred = ssd_signatures(s).prediction
        got = measure_draw(s, x0, t_end=300.0, max_evals=5_000)
        assert pred in ("convergence", "divergence")
        assert got["measured"] == pred, got
        outcomes.append(got["measured"])
        if pred == "convergence":
            assert got["tokens_decayed"] == 4
    assert outcomes[0] != outcomes[1]


def test_check_ssd_rule_reports_agreement():
    cases = [c for c in rule_cases(dims=(2,), head_counts=(2,)) if c[3] == 2]
    res = check_ssd_rule(n=1, seed=3, tokens=3, t_end=100.0, cases=cases)
    assert res["draws"] == len(cases) == 4
    for pred in ("convergence", "divergence"):
        s = res["summary"][pred]
        assert s["draws"] == 1 and s["agree"] == 1
    mixed = [r for r in res["rows"] if r["case"] == "mixed_heads"]
    assert mixed[0]["prediction"] == "indefinite" and mixed[0]["agree"] is None


# ----- bad input ---------------------------------------------------------------------------------
def _good():
    s = SSDSystem.random(3, 2, 2, 1, 2)
    return {k: getattr(s, k) for k in ("W_x", "W_B", "W_C", "W_dt", "b_dt", "a", "W_out")}


@pytest.mark.parametrize("change, needle", [
    ({"a": torch.tensor([1.0, 0.0])}, "positive"),
    ({"a": torch.tensor([1.0, -0.5])}, "positive"),
    ({"W_B": torch.ones(2, 2, 3), "W_C": torch.ones(2, 2, 3), "W_x": torch.ones(3, 2, 3),
      "W_dt": torch.ones(3, 3), "b_dt": torch.ones(3), "a": torch.ones(3), "W_out": torch.ones(3, 3, 2)},
     "not divisible"),
    ({"W_C": torch.ones(1, 3, 3)}, "W_C must have shape"),
    ({"W_out": torch.ones(3, 2, 3)}, "W_out must have shape"),
    ({"W_dt": torch.ones(2, 4)}, "W_dt must have shape"),
    ({"W_x": torch.ones(2, 3)}, "W_x must be"),
    ({"b_dt": torch.tensor([0.0, math.nan])}, "NaN"),
    ({"W_B": "nope"}, "numeric"),
])
def test_bad_parameters_raise_one_sentence(change, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        SSDSystem(**{**_good(), **change})
    msg = str(info.value)
    assert msg.endswith(".") and "\n" not in msg


def test_bad_tokens_and_impossible_constructions():
    system = SSDSystem.random(3, 2, 2, 1, 2)
    with pytest.raises(DataError, match="shape"):
        ssd_vector_field(system, torch.ones(1, 4, 2, dtype=torch.float64))
    with pytest.raises(DataError, match="shape"):
        simulate(system, torch.ones(4, 2), 1.0)
    with pytest.raises(ConfigError, match="state ≥ d"):
        definite_ssd_system(3, state=2)
    with pytest.raises(ConfigError, match="sign"):
        definite_ssd_system(2, 2, m_signs=(1,), v_signs=(1,))


@pytest.mark.parametrize("L", [4, 40])          # the explicit sum; the SSD scan
def test_exact_jacobian_of_the_ssd_flow_equals_finite_differences(L):
    from tokendyn.dynamics.integrate import Integrator, time_grid

    system = SSDSystem.random(6, 4, 3, 2, 5, seed=3, bias=True)
    h0 = torch.randn(1, L, 6, generator=torch.Generator().manual_seed(L), dtype=torch.float64)
    it = Integrator(system, h0, time_grid(1.0, 5), method="LSODA", rtol=1e-8, atol=1e-10, dtype=torch.float64,
                    backend="auto", blowup_rtol=1e-6, blowup_norm=1e12, max_evals=None, time_limit=None)
    J, ref = it.jacobian(0.0, h0), it.jacobian_fd(0.0, h0)
    assert float((J - ref).abs().max()) <= 1e-6 * float(ref.abs().max())
