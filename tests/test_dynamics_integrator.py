"""The integrator against an independent high-accuracy solution, and its steps one at a time.

Oracle: scipy's DOP853 at rtol 1e-10 on the explicit sum over P_lj (vector_field_naive),
independent of the scan, the solver and the blow-up machinery under test.
"""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from tokendyn.dynamics import (
    TokenSystem,
    classify_trajectory,
    simulate,
    time_grid,
    vector_field_naive,
)
from tokendyn.dynamics.integrate import Integrator, choose_method, jacobian_bytes
from tokendyn.dynamics.trials import figure6_system
from tokendyn.errors import ConfigError

# t_end on and off the log-spaced grid: 10**linspace(..., log10(t_end)) ends an ulp away from
# 5, 50 and 1.85 (where the last sample used to be stale) and exactly at 7.3 and 2 (checked below).
T_ENDS = (5.0, 7.3, 50.0)
T_ENDS_D2 = (1.85, 2.0)          # before these D = 2 systems turn stiff, where DOP853 would crawl
RTOL, ATOL = 1e-8, 1e-10


def oracle(system: TokenSystem, x0: torch.Tensor, times: list[float]) -> np.ndarray:
    """x at ``times`` for x0: (L, D), by DOP853 at rtol 1e-10: (len(times), L, D)."""
    L, D = x0.shape

    def f(t, y):
        x = torch.from_numpy(y).view(1, L, D)
        return vector_field_naive(system, x).reshape(-1).numpy()

    sol = solve_ivp(f, (0.0, max(times)), x0.reshape(-1).numpy(), method="DOP853", rtol=1e-10, atol=1e-12,
                    t_eval=sorted(set(times)), dense_output=True)
    assert sol.status == 0, sol.message
    return np.stack([sol.sol(t) if t > 0 else x0.reshape(-1).numpy() for t in times]).reshape(len(times), L, D)


def assert_matches_oracle(system, x0, sim, tol=1e-5):
    """Every valid sample, the last included, agrees with the oracle to 10³ × the solver rtol
    (global error of a growing system; the stale sample this guards against was 4% off). Tokens still valid at a
    sample are a prefix (blow-ups freeze a token and all after it), and the system is causal,
    so the oracle integrates that prefix alone."""
    x0 = x0.reshape(sim.x.shape[2], -1)
    valid = sim.valid[:, 0]
    checked = 0
    for m in sorted({int(v.sum()) for v in valid}):
        if m == 0:
            continue
        rows = [i for i in range(len(sim.t)) if int(valid[i].sum()) == m]
        assert all(bool(valid[i, :m].all()) for i in rows)
        ref = oracle(system, x0[:m], [float(sim.t[i]) for i in rows])
        got = sim.x[rows, 0, :m].numpy()
        scale = np.maximum(np.abs(ref), 1e-2)
        err = np.abs(got - ref) / scale
        worst_t = [float(sim.t[i]) for i in rows][int(err.reshape(len(rows), -1).max(1).argmax())]
        assert err.max() < tol, (m, err.max(), worst_t)
        checked += len(rows)
    assert checked >= 3
    assert bool(valid[-1].any()) or sim.complete


CASES_1D = {   # μ, s, a, x0
    "convergence": (-0.7, 1.3, 0.5, [0.8, -1.2, 0.5]),
    "slow_divergence": (0.9, 1.1, 0.8, [-0.7, -1.0, -0.4]),
    "fast_divergence": (0.6, 0.9, 1.2, [-0.9, 0.7, -0.5, 0.6]),
}


@pytest.mark.parametrize("t_end", T_ENDS)
@pytest.mark.parametrize("regime", list(CASES_1D))
def test_1d_samples_match_oracle(regime, t_end):
    mu, s, a, x0 = CASES_1D[regime]
    system = TokenSystem.one_dim(mu, s, a)
    x0 = torch.tensor(x0, dtype=torch.float64)[:, None]
    sim = simulate(system, x0, t_end, n_points=25, rtol=RTOL, atol=ATOL)
    assert float(sim.t[-1]) == t_end
    assert_matches_oracle(system, x0, sim)
    if regime == "fast_divergence":
        assert math.isfinite(float(sim.blowup_times[0, 1])) and not math.isfinite(float(sim.blowup_times[0, 0]))


def _power_grid_end(t_end: float, n_points: int = 25) -> float:
    logs = torch.linspace(math.log10(t_end * 1e-6), math.log10(t_end), n_points - 1, dtype=torch.float64)
    return float((10.0 ** logs)[-1])


def test_the_t_ends_cover_on_and_off_grid():
    off = {t for t in (*T_ENDS, *T_ENDS_D2) if _power_grid_end(t) != t}
    assert off == {5.0, 50.0, 1.85}


@pytest.mark.parametrize("t_end", T_ENDS_D2)
@pytest.mark.parametrize("eigs", [(-1.0, -0.5), (1.0, -0.5), pytest.param((1.0, 0.5), marks=pytest.mark.slow)])
def test_d2_samples_match_oracle(eigs, t_end):
    system = figure6_system(eigs, seed=3)
    x0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sim = simulate(system, x0, t_end, n_points=25, rtol=RTOL, atol=ATOL)
    assert float(sim.t[-1]) == t_end
    assert_matches_oracle(system, x0, sim)


def test_random_d2_draws_match_oracle():
    for seed in range(3):
        system = TokenSystem.random(2, 2, seed=seed)
        x0 = torch.randn(3, 2, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64)
        sim = simulate(system, x0, 1.85, n_points=25, rtol=RTOL, atol=ATOL)
        assert_matches_oracle(system, x0, sim)


@pytest.mark.parametrize("budget", [{"max_evals": 40}, {"max_evals": 90}])
def test_run_cut_short_ends_with_the_state_at_its_end_time(budget):
    mu, s, a, x0 = CASES_1D["convergence"]
    system = TokenSystem.one_dim(mu, s, a)
    x0 = torch.tensor(x0, dtype=torch.float64)[:, None]
    sim = simulate(system, x0, 1e4, n_points=40, rtol=RTOL, atol=ATOL, **budget)
    assert sim.info["truncated_at"] == sim.t_end == float(sim.t[-1]) < 1e4
    assert sim.n_evals <= budget["max_evals"] + 20
    assert_matches_oracle(system, x0, sim)
    assert classify_trajectory(sim).regime == "undetermined"


def test_wall_clock_limit_cuts_short():
    system = TokenSystem.one_dim(-1.0, 1.0, 1.0)
    sim = simulate(system, torch.tensor([1.0, 0.5]), 1e6, n_points=30, time_limit=1e-9)
    assert "wall-clock" in sim.info["stop_reason"] and sim.t_end < 1e6
    assert classify_trajectory(sim).reason.startswith("wall-clock")


# ----- the steps one at a time ---------------------------------------------------------

@pytest.mark.parametrize("t_end", [5.0, 50.0, 0.3, 1e7])
def test_grid_ends_exactly_at_t_end(t_end):
    grid = time_grid(t_end, 17)
    assert float(grid[-1]) == t_end and float(grid[0]) == 0 and bool((grid[1:] > grid[:-1]).all())


def _integrator(system, x0, **kw):
    opts = dict(method="LSODA", rtol=RTOL, atol=ATOL, dtype=torch.float64, backend="auto", blowup_rtol=1e-6,
                blowup_norm=1e12, max_evals=None, time_limit=None)
    opts.update(kw)
    return Integrator(system, x0, time_grid(10.0, 10), **opts)


def test_jacobian_matches_autograd_of_the_explicit_sum():
    g = torch.Generator().manual_seed(0)
    system = TokenSystem.random(3, 2, seed=4)
    x0 = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    it = _integrator(system, x0)
    it.alive[1, 2:] = False                          # frozen tokens have zero rows
    J = torch.from_numpy(it._jac(0.0, x0.reshape(-1).numpy().copy()))
    mask = it.alive[..., None].expand(2, 4, 3).reshape(-1).double()

    def f(v):
        return vector_field_naive(system, v.view(2, 4, 3)).reshape(-1) * mask

    ref = torch.autograd.functional.jacobian(f, x0.reshape(-1))
    assert torch.allclose(J, ref, rtol=1e-5, atol=1e-6)
    assert it.stiff_from == 0.0


@pytest.mark.parametrize("batch,L,D,N", [(2, 4, 3, 2), (1, 80, 3, 2)])   # the explicit sum; the scan (L²DN > 32,768)
def test_autograd_jacobian_equals_float64_finite_differences(batch, L, D, N):
    system = TokenSystem.random(D, N, seed=4)
    x0 = torch.randn(batch, L, D, generator=torch.Generator().manual_seed(L), dtype=torch.float64)
    it = _integrator(system, x0)
    it.alive[-1, L // 2:] = False                    # frozen tokens have zero rows
    J = it.jacobian(0.0, x0)
    ref = it.jacobian_fd(0.0, x0)
    assert J.shape == (batch * L * D, batch * L * D)
    scale = float(ref.abs().max())
    assert float((J - ref).abs().max()) <= 1e-6 * scale
    rows = J.view(batch, L, D, batch, L, D)
    assert float(rows[-1, L // 2:].abs().max()) == 0.0
    if batch > 1:                                    # batch rows are independent
        assert float(rows[0, :, :, 1].abs().max()) == 0.0
    # causal: no token depends on a later one
    assert float(rows[0, 0, :, 0, 1:].abs().max()) == 0.0
    # on a live prefix (what the solver integrates after a blow-up) it is the prefix's block
    k = L // 2
    it.live_shape = (batch, k, D)
    Jk = it.jacobian(0.0, x0[:, :k])
    assert torch.allclose(Jk.view(batch, k, D, batch, k, D), rows[:, :k, :, :, :k], rtol=1e-12, atol=1e-12)


def test_solver_integrates_only_the_live_prefix_after_a_blowup():
    mu, s, a, x0 = CASES_1D["fast_divergence"]
    system = TokenSystem.one_dim(mu, s, a)
    x0 = torch.tensor(x0, dtype=torch.float64)[:, None]
    grid = time_grid(5.0, 25)
    opts = dict(method="LSODA", rtol=RTOL, atol=ATOL, dtype=torch.float64, backend="auto", blowup_rtol=1e-6,
                blowup_norm=1e12, max_evals=None, time_limit=None)
    it = Integrator(system, x0[None], grid, **opts)
    sim = it.run()
    assert it.live_shape == (1, 1, 1)                # token 2 blew up: token 1 alone goes on
    assert torch.isfinite(sim.blowup_times[0]).tolist() == [False, True, True, True]
    assert sim.blew_up[0, :2].tolist() == [False, True]   # token 2 met the test; 3 and 4 ended with it
    assert not bool((sim.blew_up & ~torch.isfinite(sim.blowup_times)).any())
    assert_matches_oracle(system, x0, sim)


@pytest.mark.parametrize("method", ["BDF", "Radau", "LSODA"])
def test_stiff_solvers_with_the_exact_jacobian_match_the_oracle(method):
    # every stiff method calls the Jacobian; a blow-up in the 1-D case, and a random D = 3 system
    mu, s, a, x0 = CASES_1D["fast_divergence"]
    system = TokenSystem.one_dim(mu, s, a)
    x0 = torch.tensor(x0, dtype=torch.float64)[:, None]
    sim = simulate(system, x0, 5.0, n_points=25, rtol=RTOL, atol=ATOL, method=method)
    assert sim.info["stiff_fallback_from"] is not None or method == "LSODA"
    assert_matches_oracle(system, x0, sim)
    system = TokenSystem.random(3, 2, seed=1)
    x0 = torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sim = simulate(system, x0, 1.85, n_points=25, rtol=RTOL, atol=ATOL, method=method)
    assert_matches_oracle(system, x0, sim)


def test_freeze_takes_the_first_hit_and_all_later_tokens():
    system = TokenSystem.one_dim(1.0, 1.0, 1.0)
    x0 = torch.tensor([[[0.1], [0.2], [0.3]], [[0.1], [0.2], [0.3]]], dtype=torch.float64)
    it = _integrator(system, x0, blowup_norm=1e6)
    y = x0.clone()
    y[0, 1, 0] = 1e7                                 # row 0: token 2 past the norm cap
    it.freeze(1.5, y)
    assert it.alive[0].tolist() == [True, False, False]
    assert float(it.blowup_times[0, 1]) == float(it.blowup_times[0, 2]) == 1.5
    assert torch.equal(it.blowup_states[0, 1], y[0, 1])
    assert not math.isfinite(float(it.blowup_times[0, 0]))
    assert it.alive[1].all() and not torch.isfinite(it.blowup_times[1]).any()


def test_find_blowup_locates_the_exact_time():
    # s = 0: dx/dt = μ ln2 · x³, blow-up at T = 1/(2 μ ln2 x0²)
    mu, x0 = 1.5, 0.8
    exact = 1.0 / (2 * mu * math.log(2) * x0**2)
    sim = simulate(TokenSystem.one_dim(mu, 0.0, 1.0), torch.tensor([x0]), 2 * exact, n_points=20,
                   rtol=RTOL, atol=ATOL)
    assert abs(float(sim.blowup_times[0, 0]) - exact) <= 1e-5 * exact


def test_out_of_budget_and_method_choice():
    system = TokenSystem.one_dim(-1.0, 1.0, 1.0)
    it = _integrator(system, torch.ones(1, 2, 1, dtype=torch.float64), max_evals=5)
    assert it.out_of_budget() is None
    it.n_evals = 5
    assert "evaluation budget of 5" in it.out_of_budget()
    assert choose_method("auto", (1, 10, 16), 2**30) == ("LSODA", None)
    method, why = choose_method("auto", (1, 10_000, 16), 2**30)
    assert method == "RK45" and "GiB" in why and "160,000 unknowns" in why
    assert jacobian_bytes(1, 10_000, 16) > 2**30
    with pytest.raises(ConfigError, match="Jacobian"):
        choose_method("BDF", (1, 10_000, 16), 2**30)
    with pytest.raises(ConfigError, match="max_evals"):
        simulate(system, torch.ones(2), 1.0, max_evals=0)
    with pytest.raises(ConfigError, match="memory limit"):
        simulate(system, torch.ones(2), 1.0, n_points=10**9)


def test_progress_reports_time_evaluations_and_blowups():
    seen = []
    simulate(TokenSystem.one_dim(1.0, 1.0, 1.0), torch.tensor([-1.0, 0.8]), 5.0, n_points=10,
             progress=lambda t, n, b: seen.append((t, n, b)))
    ts = [s[0] for s in seen]
    assert ts == sorted(ts) and seen[-1][2] == 1 and seen[-1][1] > 0


@pytest.mark.parametrize("method", ["RK45", "LSODA", "BDF"])
def test_blas_threads_while_the_solver_runs(method, monkeypatch):
    """numpy's BLAS runs on one thread while an explicit solver or LSODA integrates (its thread
    pool beside torch's took the cores from the field), and keeps its threads for the solvers
    that factorise with LAPACK."""
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        return [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]

    outside = blas_threads()
    seen = []
    system = TokenSystem.random(3, 2, 0)
    field = Integrator._raw_field

    def spy(self, y, rows=None):
        if len(seen) < 5:               # (threadpool_info reads every loaded library: not on every call)
            seen.append(blas_threads())
        return field(self, y, rows)

    monkeypatch.setattr(Integrator, "_raw_field", spy)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):     # as on a machine of 2 cores or more
        two = blas_threads()
        simulate(system, torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), 1.0,
                 method=method)
    assert seen and blas_threads() == outside
    expect = two if method == "BDF" else [1] * len(two)
    assert all(s == expect for s in seen)
