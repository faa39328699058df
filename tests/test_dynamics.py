"""Token dynamics: the scan vector field against the naive sum, integration with blow-up
detection, and the 1-D theorems of THEORY.md section 3 checked by simulation."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tokendyn.dynamics import (
    TokenSystem,
    classify_trajectory,
    convergence_constants,
    predict_regime,
    predict_regime_1d,
    simulate,
    vector_field,
    vector_field_naive,
)
from tokendyn.errors import ConfigError, DataError
from tokendyn.ops import available_backends

BACKENDS = [b for b in ("reference", "chunked") if b in available_backends()]


def random_system(d, n, seed, general_A, bias):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    b = r(d) if bias else None
    if general_A:
        A = -(0.1 + torch.rand(d, n, generator=g, dtype=torch.float64) * 2)
        b_or_zero = b if b is not None else torch.zeros(d, dtype=torch.float64)
        return TokenSystem(r(n, d), r(n, d), r(d, d) * 0.5, b_or_zero, A)
    S_B, S_C, S_Delta = r(n, d), r(n, d), r(d, d) * 0.5  # drawn before the decay: the order fixes the draws
    return TokenSystem.from_decay(S_B, S_C, S_Delta, 0.1 + torch.rand(d, generator=g, dtype=torch.float64), b)


@pytest.mark.parametrize("backend", BACKENDS)
@given(d=st.integers(1, 5), n=st.integers(1, 4), L=st.integers(1, 12), batch=st.integers(1, 3),
       general_A=st.booleans(), bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=20, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_scan_field_equals_naive_sum_float64(backend, d, n, L, batch, general_A, bias, seed):
    system = random_system(d, n, seed, general_A, bias)
    x = torch.randn(batch, L, d, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    fast = vector_field(system, x, backend)
    oracle = vector_field_naive(system, x, block=5)
    assert torch.allclose(fast, oracle, rtol=1e-9, atol=1e-11 * (1 + float(oracle.abs().max())))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("L", [1, 33, 200])
def test_scan_field_float32_against_float64_oracle(backend, L):
    system = random_system(6, 4, L, False, True)
    x = torch.randn(2, L, 6, generator=torch.Generator().manual_seed(L), dtype=torch.float64)
    oracle = vector_field_naive(system, x)
    got = vector_field(system, x.float(), backend).double()
    err = (got - oracle).abs().max() / oracle.abs().max()
    assert err < 1e-4


def test_one_dim_field_matches_theory_formula():
    # dx_l/dt = μ x_l Σ_{j≤l} x_j² Δ(x_j) exp(−a Σ_{k=j+1..l} Δ(x_k)), written out directly
    mu, s, a, b = -0.7, 1.3, 0.4, 0.2
    x = torch.tensor([0.3, -1.1, 0.0, 2.0, -0.4], dtype=torch.float64)
    delta = F.softplus(s * x + b)
    expect = torch.zeros_like(x)
    for l in range(5):
        for j in range(l + 1):
            expect[l] += x[j] ** 2 * delta[j] * math.exp(-a * float(delta[j + 1:l + 1].sum()))
        expect[l] *= mu * x[l]
    system = TokenSystem.one_dim(mu, s, a, b)
    assert torch.allclose(vector_field(system, x[None, :, None])[0, :, 0], expect, rtol=1e-12, atol=1e-14)
    assert torch.allclose(system.io_matrix, torch.tensor([[mu]], dtype=torch.float64))


magnitudes = st.floats(0.25, 2.0)
signed = st.tuples(st.sampled_from([-1.0, 1.0]), magnitudes).map(lambda p: p[0] * p[1])


@st.composite
def one_dim_draws(draw):
    mu = draw(signed)
    s = draw(signed)
    a = draw(st.floats(0.1, 3.0))
    L = draw(st.integers(1, 8))
    x0 = [draw(st.one_of(signed, st.just(0.0))) if L > 1 else draw(signed) for _ in range(L)]
    if all(v == 0 for v in x0):
        x0[0] = draw(signed)
    return mu, s, a, x0


@given(draw=one_dim_draws())
@example(draw=(-1.0, -1.0, 0.25, [1.0, -1.0, -2.0, 0.0, -0.25]))   # a slowly settling last token
@settings(max_examples=25, deadline=None)
def test_one_dim_theorems_by_simulation(draw):
    """predicted == simulated regime; zero tokens stay zero; signs never flip; blow-up times
    below the [derived] bound; convergent tail slopes: the first token's in [−0.6, −0.4] (its
    equation is dx/dt = μ·ln2·x³ at large t, exactly 1/√t); a later token's approaches −1/2 from
    above only slowly when its own start is small (e.g. −0.40, −0.45, −0.48 at t = 1e5, 1e7, 1e9
    for the last token of x0 = [1, −1, −2, 0, −0.25], μ = s = −1, a = 1/4), so theirs is checked
    in [−0.6, −0.3] at t = 1e7."""
    mu, s, a, x0 = draw
    pred = predict_regime_1d(mu, s, x0, a)
    if pred.regime == "fast_divergence":
        t_end = 1.5 * min(b for b in pred.blowup_bounds if b is not None)
    elif pred.regime == "convergence":
        t_end = 1e7
    else:
        t_end = 1e3
    sim = simulate(TokenSystem.one_dim(mu, s, a), torch.tensor(x0, dtype=torch.float64), t_end,
                   n_points=40, rtol=1e-7, atol=1e-10)
    assert torch.isfinite(sim.x).all()
    got = classify_trajectory(sim)
    assert got.regime == pred.regime
    x = sim.x[:, 0, :, 0]
    x0t = torch.tensor(x0, dtype=torch.float64)
    assert (x[:, x0t == 0] == 0).all()                       # zero tokens stay zero
    nz = x0t != 0
    assert (torch.sign(x[:, nz]) == torch.sign(x0t[nz])).all()   # signs never flip
    if pred.regime == "fast_divergence":
        for l in range(len(x0)):
            bound = pred.effective_blowup_bounds[l]
            if bound is not None and bound <= t_end:
                assert got.blowup_times[l] is not None and got.blowup_times[l] <= bound * (1 + 1e-6)
            if got.blowup_times[l] is not None:
                assert bound is not None and got.blowup_times[l] <= bound * (1 + 1e-6)
            own = pred.blowup_bounds[l]
            if own is not None and got.blowup_times[l] is not None:   # THEORY.md's T_l itself
                assert got.blowup_times[l] <= 1.0 / (3 * mu * abs(s) * abs(x0[l]) ** 3) * (1 + 1e-6)
    elif pred.regime == "convergence":
        for l in range(len(x0)):
            if x0[l] != 0:
                low, high = (-0.6, -0.4) if l == 0 else (-0.6, -0.3)
                assert low <= got.loglog_slope[l] <= high
    else:
        assert all(v is None for v in got.blowup_times)
        assert all(r > 0 for r, v in zip(got.relative_change, x0) if v != 0)


@pytest.mark.parametrize("mu,a,b,x0", [(-0.8, 0.7, 0.0, [1.0, -0.5, 0.0, 0.8, 0.3]),
                                       (-2.0, 2.5, 0.5, [0.4, 1.5, -0.9]),
                                       (-0.3, 0.2, -0.3, [-1.2, 0.0, 0.0, 0.6])])
def test_convergence_constants_derived(mu, a, b, x0):
    """[derived] |x_l(t)| ≈ c_l/√t with c_1² = 1/(2|μ|softplus(b)) for the first token."""
    sim = simulate(TokenSystem.one_dim(mu, 1.0, a, b), torch.tensor(x0, dtype=torch.float64), 1e6,
                   n_points=30, rtol=1e-8, atol=1e-12)
    c = convergence_constants(mu, a, x0, b)
    assert abs(c[[i for i, v in enumerate(x0) if v != 0][0]] ** 2 * 2 * abs(mu) * math.log1p(math.exp(b)) - 1) < 1e-12
    got = sim.norms[-1, 0] * math.sqrt(1e6)
    for l, v in enumerate(x0):
        if v == 0:
            assert float(got[l]) == 0.0
        else:
            assert abs(float(got[l]) / c[l] - 1) < 0.03


def test_mu_zero_is_static():
    sim = simulate(TokenSystem.one_dim(0.0, 1.0, 1.0), torch.tensor([1.0, -2.0]), 10.0, n_points=10)
    assert classify_trajectory(sim).regime == "static" == predict_regime_1d(0.0, 1.0, [1.0, -2.0]).regime
    assert torch.equal(sim.x[-1], sim.x[0])


def test_s_zero_blows_up_within_cubic_bound():
    # s = 0: Δ ≡ ln 2, d|x_1|/dt = μ ln2 |x_1|³ exactly: blow-up at 1/(2 μ ln2 x0²)
    mu, x0 = 1.0, 0.8
    exact = 1.0 / (2 * mu * math.log(2) * x0 ** 2)
    pred = predict_regime_1d(mu, 0.0, [x0])
    assert pred.regime == "fast_divergence" and abs(pred.blowup_bounds[0] - exact) < 1e-12
    sim = simulate(TokenSystem.one_dim(mu, 0.0, 1.0), torch.tensor([x0]), 2 * exact, n_points=20)
    bt = float(sim.blowup_times[0, 0])
    assert exact * (1 - 1e-4) <= bt <= exact


def test_blowup_drags_later_tokens_and_spares_earlier():
    sim = simulate(TokenSystem.one_dim(1.0, 1.0, 1.0), torch.tensor([-1.0, 0.8, -0.5]), 5.0, n_points=20)
    bt = sim.blowup_times[0]
    assert math.isinf(float(bt[0])) and float(bt[1]) == float(bt[2]) < 1 / (3 * 0.8 ** 3)
    assert sim.valid[-1, 0].tolist() == [True, False, False]
    assert torch.isfinite(sim.x).all()


def test_batch_matches_single_runs():
    system = TokenSystem.one_dim(1.0, 1.0, 0.5)
    x0 = torch.tensor([[[-1.0], [0.7]], [[-0.5], [-0.2]]], dtype=torch.float64)
    both = simulate(system, x0, 3.0, n_points=15)
    for i in range(2):
        one = simulate(system, x0[i], 3.0, n_points=15)
        assert torch.allclose(one.blowup_times[0], both.blowup_times[i], rtol=1e-5)
        ok = one.valid[:, 0]
        assert torch.allclose(one.x[:, 0][ok], both.x[:, i][ok], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("eigs,expect", [((1.0, 0.5), "divergence"), ((1.0, -0.5), "divergence"),
                                         ((-1.0, -0.5), "convergence")])
def test_figure6_rule_d2(eigs, expect):
    from tokendyn.dynamics.trials import figure6_system as fig6_system

    system = fig6_system(eigs, seed=0)
    x0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    pred = predict_regime(system, x0)
    sim = simulate(system, x0, 100.0, n_points=20, rtol=1e-7, atol=1e-10)
    got = classify_trajectory(sim).regime
    assert expect in pred.regime and expect in got
    assert pred.eigen_signature["positive"] == sum(e > 0 for e in eigs)


def test_bad_parameters_raise_one_sentence():
    with pytest.raises(DataError, match="positive"):
        TokenSystem.one_dim(1.0, 1.0, 0.0)
    with pytest.raises(DataError, match="shape"):
        TokenSystem.from_params({"S_B": [[1, 2]], "S_C": [[1]], "S_Delta": [[1]], "a": [1]})
    with pytest.raises(DataError, match="exactly one"):
        TokenSystem.from_params({"S_B": [[1]], "S_C": [[1]], "S_Delta": [[1]], "a": [1], "A": [[-1]]})
    with pytest.raises(DataError, match="negative"):
        TokenSystem(torch.ones(1, 1), torch.ones(1, 1), torch.ones(1, 1), torch.zeros(1), torch.ones(1, 1))
    with pytest.raises(ConfigError):
        simulate(TokenSystem.one_dim(1.0, 1.0, 1.0), torch.tensor([1.0]), 1.0, method="nope")
    with pytest.raises(DataError, match="shape"):
        simulate(TokenSystem.random(3, 2), torch.ones(4, 2), 1.0)


def test_stiff_and_explicit_solvers_agree():
    system = TokenSystem.one_dim(-1.0, 1.0, 1.0)
    x0 = torch.tensor([1.0, -0.6, 0.3], dtype=torch.float64)
    ref = simulate(system, x0, 50.0, n_points=12, method="RK45")
    for method in ("LSODA", "BDF"):
        other = simulate(system, x0, 50.0, n_points=12, method=method)
        assert torch.allclose(other.x, ref.x, rtol=1e-5, atol=1e-8)


def test_eval_budget_truncates_cleanly():
    sim = simulate(TokenSystem.one_dim(-1.0, 1.0, 1.0), torch.tensor([1.0, 0.5]), 1e4, n_points=30,
                   max_evals=60)
    assert sim.info["truncated_at"] is not None and sim.t_end < 1e4
    assert "evaluation budget" in sim.info["stop_reason"]
    assert sim.t.shape[0] == sim.x.shape[0] == sim.valid.shape[0] <= 30
    assert float(sim.t[-1]) == sim.t_end and torch.isfinite(sim.x).all()
    got = classify_trajectory(sim)
    assert got.regime == "undetermined" and "evaluation budget" in got.reason


def test_float32_simulation_tracks_float64():
    system = TokenSystem.one_dim(-0.8, 1.0, 0.7)
    x0 = torch.tensor([1.0, -0.5, 0.8], dtype=torch.float64)
    ref = simulate(system, x0, 100.0, n_points=12)
    low = simulate(system, x0, 100.0, n_points=12, dtype=torch.float32, rtol=1e-5, atol=1e-7)
    assert low.x.dtype == torch.float32
    assert torch.allclose(low.x.double(), ref.x, rtol=1e-3, atol=1e-5)


def test_stiff_solver_failure_ends_the_simulation_cleanly():
    """A D = 2 system on which LSODA gives up near t ≈ 75: the result stops there, with the
    reason, finite values and a classification, instead of an error (regression)."""
    from tokendyn.dynamics.integrate import simulate
    from tokendyn.dynamics.regimes import classify_trajectory
    from tokendyn.dynamics.vector_field import TokenSystem

    system = TokenSystem.random(2, 2, seed=14)
    x0 = torch.tensor([[1.1634196675530781, 0.15195834737534197], [0.7091314086588245, 0.4072214018108293],
                       [-1.9383013457547422, -1.2799337840043392], [-1.3482353085796694, 0.060229077486138115],
                       [-0.29734942638611767, 1.5461882177348336], [-0.43081652907026097, -0.5253897700578459]],
                      dtype=torch.float64)
    sim = simulate(system, x0, 200.0, n_points=30, rtol=1e-7, atol=1e-10, max_evals=20_000)
    if sim.info["truncated_at"] is None:     # a better solver may get through: then it must reach t_end
        assert sim.t_end == 200.0
        return
    assert sim.info["stop_reason"]
    assert sim.info["truncated_at"] == sim.t_end < 200.0
    assert float(sim.t[-1]) == sim.t_end and sim.x.shape[0] == sim.t.numel()
    assert torch.isfinite(sim.x[sim.valid]).all()
    got = classify_trajectory(sim)
    blew_up = any(b is not None for b in got.blowup_times)
    assert got.regime == ("fast_divergence" if blew_up else "undetermined")


def test_convergence_constants_relax_at_the_derived_exponents():
    """[derived] relaxation_exponents: |x_l|·√t/c_l − 1 shrinks like t^(−κ_l). Where a·softplus(b) is
    large, every token has κ = 1/2 and sits on its constant at t = 10⁶; where it is small (a = 0.1),
    the tokens after the first have κ ≈ 0.067 and are still far from theirs at t = 10⁶, as the
    exponent says, while the first token (κ = 1/2) has arrived."""
    from tokendyn.dynamics.regimes import convergence_constants, relaxation_exponents

    for mu, s, a, x0, slow in ((-2.0, 0.5, 3.0, [1.0, 1.0, 1.0, 1.0], False), (-1.0, 1.0, 0.1, [1.0, 0.8, -0.5], True)):
        sim = simulate(TokenSystem.one_dim(mu, s, a), torch.tensor(x0, dtype=torch.float64), 1e6, n_points=40,
                       rtol=1e-9, atol=1e-14)
        c = torch.tensor(convergence_constants(mu, a, x0), dtype=torch.float64)
        kappa = relaxation_exponents(mu, a, x0)
        dev = (sim.norms[:, 0] * sim.t.sqrt()[:, None] / c - 1).abs()       # (T, L)
        i = int((sim.t >= 1e4).nonzero()[0])
        slope = (dev[-1].log() - dev[i].log()) / math.log(float(sim.t[-1] / sim.t[i]))
        assert kappa[0] == 0.5 and abs(float(slope[0]) + 0.5) < 0.05 and float(dev[-1, 0]) < 1e-2
        for l in range(1, len(x0)):
            if slow:
                assert kappa[l] == pytest.approx(1 - math.exp(-a * math.log(2)), rel=1e-12)
                assert float(dev[-1, l]) > 0.05 and 1e6 ** -kappa[l] > 0.3       # far, as predicted
            else:
                assert kappa[l] == 0.5 and float(dev[-1, l]) < 1e-2
