"""Token reordering (THEORY.md section 6): SoftSort, the exact sort with its straight-through
gradient, and the inverses, against plain float64 references."""

import math

import pytest
import torch

from tokendyn.errors import ConfigError
from tokendyn.model.reorder import (
    check_reorder_settings,
    hard_permute,
    importance_scores,
    inverse_permute,
    permute_tokens,
    soft_permute,
    soft_restore,
    softsort_matrix,
    sort_order,
)

f64 = torch.float64


def _scores(b, L, seed, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, L, generator=g, dtype=f64) * spread


def _tokens(b, C, L, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randn(b, C, L, generator=g, dtype=f64)


def _cos(a, b):
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_softsort_rows_are_stochastic_and_peak_at_rank(seed, power):
    s = _scores(2, 13, seed)
    P = softsort_matrix(s, tau=0.7, power=power)
    assert P.shape == (2, 13, 13)
    assert (P >= 0).all()
    torch.testing.assert_close(P.sum(-1), torch.ones(2, 13, dtype=f64), rtol=0, atol=1e-12)
    # row i is largest at the token of rank i (the logit there is 0, the largest possible)
    assert torch.equal(P.argmax(-1), sort_order(s))


def test_softsort_formula_matches_definition():
    """P̂ = softmax_rows(−|sort_desc(−s)_i − (−s)_j|^p / τ), written out with loops."""
    s = _scores(1, 7, 5)[0]
    tau, p = 0.4, 1.5
    neg_sorted_desc = torch.sort(-s, descending=True).values
    ref = torch.empty(7, 7, dtype=f64)
    for i in range(7):
        logits = torch.tensor([-abs(float(neg_sorted_desc[i] - (-s[j]))) ** p / tau for j in range(7)], dtype=f64)
        ref[i] = torch.softmax(logits, 0)
    torch.testing.assert_close(softsort_matrix(s[None], tau, p)[0], ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("seed", range(3))
def test_hard_preserves_the_tokens_exactly(seed):
    s = _scores(3, 50, seed).float()
    x = _tokens(3, 6, 50, seed).float()
    z = _tokens(3, 6, 50, seed + 7).float()
    (xs, zs), perm = hard_permute(s, x, z)
    # the plain reference: index each sequence with its argsort
    for b in range(3):
        order = torch.argsort(s[b], stable=True)
        assert torch.equal(xs[b], x[b][:, order]) and torch.equal(zs[b], z[b][:, order])
        assert torch.equal(torch.sort(xs[b], dim=-1).values, torch.sort(x[b], dim=-1).values)
    # scores increase along the sorted sequence: the most important token is last
    assert (s.gather(-1, perm).diff(dim=-1) >= 0).all()
    assert torch.equal(inverse_permute(xs, perm), x)


@pytest.mark.parametrize("seed", range(3))
def test_soft_approaches_hard_as_tau_goes_to_zero(seed):
    s = _scores(2, 20, seed)
    x = _tokens(2, 5, 20, seed)
    (xh,), _ = hard_permute(s, x)
    gap = float(s.sort(-1).values.diff(dim=-1).min())    # τ in units of the closest pair of scores
    errs = []
    for tau in (1.0, gap, gap / 5, gap / 40):
        P = softsort_matrix(s, tau)
        errs.append(float((soft_permute(P, x) - xh).abs().max()))
        back = soft_restore(P, soft_permute(P, x))
        if tau == gap / 40:
            torch.testing.assert_close(soft_permute(P, x), xh, rtol=0, atol=1e-6)
            torch.testing.assert_close(back, x, rtol=0, atol=1e-6)
    assert errs == sorted(errs, reverse=True) and errs[0] > 1e-2


def test_soft_restore_is_the_inverse_of_a_permutation_matrix():
    s = _scores(2, 9, 3)
    perm = sort_order(s)
    P = torch.nn.functional.one_hot(perm, 9).to(f64)       # exact permutation matrices
    y = _tokens(2, 4, 9, 3)
    torch.testing.assert_close(soft_permute(P, y), permute_tokens(y, perm), rtol=0, atol=0)
    torch.testing.assert_close(soft_restore(P, y), inverse_permute(y, perm), rtol=0, atol=0)
    Pn = softsort_matrix(s, 2.0)
    ones = torch.ones(2, 1, 9, dtype=f64)
    torch.testing.assert_close(soft_restore(Pn, ones), ones)  # its rows are stochastic too


def _soft_score_grad(s, xs, grads, tau, power):
    """float64 oracle: the score gradient of SoftSort's action Σ_t <G_t, P̂ x_t> (x detached)."""
    s = s.detach().clone().requires_grad_(True)
    P = softsort_matrix(s, tau, power)
    loss = sum((g * soft_permute(P, x.detach())).sum() for g, x in zip(grads, xs))
    return torch.autograd.grad(loss, s)[0]


def _banded_score_grad_ref(s, xs, grads, tau, power, w):
    """float64 oracle of the banded surrogate, by autograd over explicitly built band rows."""
    s = s.detach().clone().requires_grad_(True)
    perm = sort_order(s.detach())
    ss = s.gather(-1, perm)
    L = s.shape[-1]
    loss = 0.0
    for i in range(L):
        ranks = [i + k for k in range(-w, w + 1) if 0 <= i + k < L]
        u = ss[:, ranks] - ss[:, i:i + 1]
        a = torch.softmax(-(u.abs() + 0.0).pow(power) / tau if power >= 1 else
                          -torch.where(u == 0, torch.zeros_like(u), u.abs().clamp_min(1e-300) ** power) / tau, -1)
        for g, x in zip(grads, xs):
            xsorted = permute_tokens(x.detach(), perm)
            loss = loss + (g[:, :, i] * torch.einsum("bk,bck->bc", a, xsorted[:, :, ranks])).sum()
    return torch.autograd.grad(loss, s)[0]


def _hard_grads(s, xs, grads, tau, power, w):
    s = s.detach().clone().requires_grad_(True)
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    outs, _ = hard_permute(s, *xs, tau=tau, power=power, window=w)
    loss = sum((g * o).sum() for g, o in zip(grads, outs))
    return torch.autograd.grad(loss, [s, *xs])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("power", [1.0, 1.5])
def test_hard_full_window_gradient_equals_softsort_gradient(seed, power):
    b, C, L = 2, 3, 11
    s, x, z = _scores(b, L, seed, 1.0), _tokens(b, C, L, seed), _tokens(b, C + 1, L, seed + 1)
    gx, gz = _tokens(b, C, L, seed + 2), _tokens(b, C + 1, L, seed + 3)
    ref = _soft_score_grad(s, [x, z], [gx, gz], 0.8, power)
    got_s, got_x, got_z = _hard_grads(s, [x, z], [gx, gz], 0.8, power, w=L - 1)
    torch.testing.assert_close(got_s, ref, rtol=1e-10, atol=1e-12)
    # the tokens' gradient is the permutation's exact transpose
    perm = sort_order(s)
    torch.testing.assert_close(got_x, inverse_permute(gx, perm), rtol=0, atol=0)
    torch.testing.assert_close(got_z, inverse_permute(gz, perm), rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("w,power", [(1, 1.0), (2, 1.0), (3, 0.5), (2, 2.0)])
def test_banded_gradient_matches_explicit_band(seed, w, power):
    b, C, L = 2, 4, 9
    s, x = _scores(b, L, seed, 1.0), _tokens(b, C, L, seed)
    gx = _tokens(b, C, L, seed + 5)
    ref = _banded_score_grad_ref(s, [x], [gx], 0.6, power, w)
    got = _hard_grads(s, [x], [gx], 0.6, power, w)[0]
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_hard_gradient_direction_approaches_soft_as_tau_goes_to_zero(seed):
    """With a band of one rank each side, the surrogate's direction tends to SoftSort's."""
    b, C, L = 2, 8, 32
    s, x = _scores(b, L, seed), _tokens(b, C, L, seed)
    gx = _tokens(b, C, L, seed + 9)
    cos = []
    for tau in (1.0, 0.1, 0.01):
        soft = _soft_score_grad(s, [x], [gx], tau, 1.0)
        hard = _hard_grads(s, [x], [gx], tau, 1.0, w=1)[0]
        cos.append(_cos(hard, soft))
    assert cos[-1] > 0.999, cos
    assert cos[-1] >= cos[0] - 1e-9, cos


def test_scores_and_gradient_reach_k():
    g = torch.Generator().manual_seed(0)
    b, D, L = 2, 6, 10
    dt = torch.randn(b, D, L, generator=g, dtype=f64)
    bias = torch.randn(D, generator=g, dtype=f64)
    k = torch.randn(D, generator=g, dtype=f64, requires_grad=True)
    s = importance_scores(dt, bias, k)
    torch.testing.assert_close(s, torch.stack([(k[:, None] * (dt[i] + bias[:, None])).sum(0) for i in range(b)]))
    x = torch.randn(b, 3, L, generator=g, dtype=f64)
    target = torch.randn(b, 3, L, generator=g, dtype=f64)
    for mode in ("soft", "hard"):
        k.grad = None
        s = importance_scores(dt, bias, k)
        if mode == "soft":
            out = soft_permute(softsort_matrix(s, 0.5), x)
        else:
            (out,), _ = hard_permute(s, x, tau=0.5)
        ((out - target) ** 2).sum().backward()
        assert k.grad is not None and torch.isfinite(k.grad).all() and k.grad.abs().sum() > 0, mode


def test_float32_hard_matches_float64():
    s, x = _scores(2, 40, 1), _tokens(2, 5, 40, 1)
    gx = _tokens(2, 5, 40, 2)
    ref = _hard_grads(s, [x], [gx], 0.5, 1.0, 4)
    got = _hard_grads(s.float(), [x.float()], [gx.float()], 0.5, 1.0, 4)
    for r, o in zip(ref, got):
        assert o.dtype == torch.float32
        torch.testing.assert_close(o.double(), r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("args,match", [
    (("sideways", 1.0, 1.0), "unknown reorder mode"),
    (("soft", 0.0, 1.0), "reorder_tau"),
    (("soft", -1.0, 1.0), "reorder_tau"),
    (("hard", math.nan, 1.0), "reorder_tau"),
    (("hard", 1.0, 0.0), "reorder_power"),
    (("hard", 1.0, 1.0, "z"), "reorder_branches"),
])
def test_bad_settings_are_one_sentence(args, match):
    with pytest.raises(ConfigError, match=match):
        check_reorder_settings(*args)


@pytest.mark.parametrize("w", [0, 1, 3])
def test_band_dots_in_chunks_match_a_loop(monkeypatch, w):
    import tokendyn.model.reorder as R

    g, o = _tokens(2, 3, 13, 4), _tokens(2, 3, 13, 5)
    ref = torch.zeros(2, 13, 2 * w + 1, dtype=f64)
    for i in range(13):
        for k in range(-w, w + 1):
            if 0 <= i + k < 13:
                ref[:, i, k + w] = (g[:, :, i] * o[:, :, i + k]).sum(1)
    perm = sort_order(_scores(2, 13, 6))
    x = inverse_permute(o, perm)                    # so that permute_tokens(x, perm) == o
    torch.testing.assert_close(R.band_dots(g, x, perm, w), ref, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(R, "_DOTS_ONE_SHOT", 0)
    monkeypatch.setattr(R, "_DOTS_CHUNK", 2 * 3 * (2 * w + 1) * 4)    # chunks of 4 positions
    torch.testing.assert_close(R.band_dots(g, x, perm, w), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("L", [33, 1024])
def test_cuda_matches_the_cpu_float64_oracle(L):
    s, x = _scores(2, L, 7), _tokens(2, 16, L, 7)
    gx = _tokens(2, 16, L, 8)
    ref = _hard_grads(s, [x], [gx], 0.5, 1.0, 4)
    got = _hard_grads(s.float().cuda(), [x.float().cuda()], [gx.float().cuda()], 0.5, 1.0, 4)
    for r, o in zip(ref, got):
        torch.testing.assert_close(o.double().cpu(), r, rtol=1e-4, atol=1e-5)
    P = softsort_matrix(s.float().cuda(), 0.5)
    torch.testing.assert_close(soft_permute(P, x.float().cuda()).double().cpu(),
                               soft_permute(softsort_matrix(s, 0.5), x), rtol=1e-4, atol=1e-4)
