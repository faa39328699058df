"""Per-layer spectrum: the 2N×2N path against dense D×D eigensolvers, and the regime rule."""

import pytest
import torch
import torch.nn.functional as F

from tokendyn.analysis.layers import check_io_parameters, layer_spectrum, verdict
from tokendyn.dynamics.regimes import regime_from_signature
from tokendyn.errors import CheckpointError


def _params(N, D, seed=0, dtype=torch.float32, S_B=None, S_C=None):
    g = torch.Generator().manual_seed(seed)
    r = 3
    return {
        "S_B": torch.randn(N, D, generator=g).to(dtype) if S_B is None else S_B,
        "S_C": torch.randn(N, D, generator=g).to(dtype) if S_C is None else S_C,
        "S_Delta": (torch.randn(D, r, generator=g) @ torch.randn(r, D, generator=g)).to(dtype),
        "b_Delta": torch.randn(D, generator=g).to(dtype),
        "A": -torch.exp(torch.randn(D, N, generator=g)).to(dtype),
    }


def _dense(p):
    S_B, S_C = p["S_B"].double(), p["S_C"].double()
    M = S_C.T @ S_B
    return M, torch.linalg.eigvalsh(0.5 * (M + M.T))


@pytest.mark.parametrize("N,D", [(2, 16), (4, 24), (8, 64), (16, 40), (6, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_signature_matches_dense(N, D, dtype):
    p = _params(N, D, seed=N * D, dtype=dtype)
    s = layer_spectrum(p, index=3)
    M, dense = _dense(p)
    tol = 1e-8 * float(dense.abs().max())
    assert s.positive == int((dense > tol).sum())
    assert s.negative == int((dense < -tol).sum())
    assert s.zero == D - s.positive - s.negative
    assert s.largest == pytest.approx(float(dense.max()), rel=1e-9, abs=1e-9)
    assert s.smallest == pytest.approx(float(dense.min()), rel=1e-9, abs=1e-9)
    # the small problem's eigenvalues are the dense ones that can be nonzero
    nz = dense[dense.abs() > tol]
    small = s.sym_eigvals[s.sym_eigvals.abs() > tol]
    torch.testing.assert_close(small, nz, rtol=1e-9, atol=1e-9)
    # nonzero eigenvalues of M (complex) against the dense D×D eigensolver
    ev = torch.linalg.eigvals(M)
    ev = ev[ev.abs() > 1e-6 * float(ev.abs().max())]
    got = s.io_eigvals
    assert got.numel() == ev.numel() == min(N, D)
    for z in got:   # each of ours is (within tolerance) one of the dense ones
        assert float((ev - z).abs().min()) < 1e-6 * float(ev.abs().max())
    assert s.index == 3 and s.d_inner == D and s.d_state == N


def test_parameter_statistics():
    p = _params(4, 32, seed=1)
    s = layer_spectrum(p)
    a = (-p["A"]).double().flatten()
    assert s.decay["min"] == pytest.approx(float(a.min()))
    assert s.decay["median"] == pytest.approx(float(a.median()))
    assert s.delta_at_zero["mean"] == pytest.approx(float(F.softplus(p["b_Delta"].double()).mean()))
    assert s.b_Delta["max"] == pytest.approx(float(p["b_Delta"].max()))
    assert s.S_Delta["frobenius"] == pytest.approx(float(p["S_Delta"].double().norm()), rel=1e-9)
    d = s.as_dict()
    for key in ("index", "io_eigs_positive", "io_eigs_negative", "io_eigs_zero", "predicted_regime", "verdict"):
        assert key in d


def _constrained(N, D, sign, seed=0):
    """THEORY.md section 5: S_C = U, S_B = diag(λ) U with U unit upper triangular."""
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(N, D, generator=g, dtype=torch.float64).triu(1)
    U[:, :N] += torch.eye(N, dtype=torch.float64)
    lam = F.softplus(torch.randn(N, generator=g, dtype=torch.float64)) + 0.7
    if sign == "negative":
        lam = -lam
    elif sign == "mixed":
        lam[N // 2:] = -lam[N // 2:]
    return _params(N, D, seed=seed, dtype=torch.float64, S_B=lam[:, None] * U, S_C=U)


@pytest.mark.parametrize("sign,pos,neg,regime,word", [
    ("positive", 4, 0, "divergence", "divergent-prone"),
    ("negative", 0, 4, "convergence", "convergent-prone"),
    ("mixed", 2, 2, "divergence", "divergent-prone"),
])
def test_regime_of_constructed_layers(sign, pos, neg, regime, word):
    s = layer_spectrum(_constrained(4, 20, sign))
    assert (s.positive, s.negative, s.zero) == (pos, neg, 20 - pos - neg)
    assert s.predicted_regime == regime
    assert s.verdict.startswith(word)


def test_zero_io_matrix_is_static():
    p = _params(3, 10)
    p["S_B"] = torch.zeros(3, 10)
    s = layer_spectrum(p)
    assert (s.positive, s.negative, s.zero) == (0, 0, 10)
    assert s.predicted_regime == "static" and "static" in s.verdict


def test_rule_and_verdict():
    assert regime_from_signature(1, 0) == "divergence"
    assert regime_from_signature(0, 3) == "convergence"
    assert regime_from_signature(0, 0) == "static"
    assert verdict(0, 2) == "convergent-prone"
    assert "mixed" in verdict(1, 1)


def test_bad_parameters():
    p = _params(2, 6)
    with pytest.raises(CheckpointError, match="NaN"):
        check_io_parameters({**p, "A": p["A"].clone().fill_(float("nan"))})
    with pytest.raises(CheckpointError, match="shape"):
        check_io_parameters({**p, "S_C": p["S_C"][:, :5]})
    with pytest.raises(CheckpointError, match="lacks"):
        check_io_parameters({k: v for k, v in p.items() if k != "S_Delta"})
