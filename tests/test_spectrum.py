"""The 2N×2N spectrum path against dense eigensolvers (THEORY.md section 2, [derived])."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from tokendyn.dynamics.spectrum import eigen_signature, io_eigvals, io_matrix, symmetric_io_eigvals


@given(n=st.integers(1, 8), d=st.integers(1, 64), seed=st.integers(0, 2**31 - 1))
def test_symmetric_eigs_match_dense(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    S_B = torch.randn(n, d, generator=g, dtype=torch.float64)
    S_C = torch.randn(n, d, generator=g, dtype=torch.float64)
    M = io_matrix(S_B, S_C)
    dense = torch.linalg.eigvalsh(0.5 * (M + M.T))
    small = symmetric_io_eigvals(S_B, S_C)
    # the dense spectrum is the small one padded with zeros
    padded = torch.sort(torch.cat([small, torch.zeros(d - small.numel(), dtype=torch.float64)])).values
    scale = dense.abs().max().clamp_min(1e-12)
    assert torch.allclose(padded, dense, atol=1e-9 * float(scale) * d, rtol=0)
    sig = eigen_signature(S_B, S_C)
    tol = 1e-8 * float(scale)
    assert sig.positive == int((dense > tol).sum())
    assert sig.negative == int((dense < -tol).sum())
    assert sig.positive + sig.negative + sig.zero == d
    assert abs(sig.largest - float(dense.max())) <= 1e-8 * float(scale) * d
    assert abs(sig.smallest - float(dense.min())) <= 1e-8 * float(scale) * d


@given(n=st.integers(1, 8), d=st.integers(1, 48), seed=st.integers(0, 2**31 - 1))
def test_io_eigvals_are_nonzero_eigs_of_M(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    S_B = torch.randn(n, d, generator=g, dtype=torch.float64)
    S_C = torch.randn(n, d, generator=g, dtype=torch.float64)
    dense = torch.linalg.eigvals(io_matrix(S_B, S_C))
    small = io_eigvals(S_B, S_C)
    # every small eigenvalue appears among the dense ones
    for lam in small:
        assert float((dense - lam).abs().min()) <= 1e-6 * (1 + float(lam.abs()))


def test_psd_construction_has_n_positive():
    """S_C = U, S_B = diag(λ) U with λ > 0 (refinement 1) gives exactly N positive eigenvalues."""
    g = torch.Generator().manual_seed(0)
    n, d = 4, 32
    U = (torch.triu(torch.randn(n, d, generator=g, dtype=torch.float64), diagonal=1)
         + torch.eye(n, d, dtype=torch.float64))
    lam = torch.rand(n, generator=g, dtype=torch.float64) + 0.7
    sig = eigen_signature(lam[:, None] * U, U)
    assert (sig.positive, sig.negative, sig.zero) == (n, 0, d - n)
    sig = eigen_signature(-lam[:, None] * U, U)
    assert (sig.positive, sig.negative, sig.zero) == (0, n, d - n)


def test_zero_matrix():
    sig = eigen_signature(torch.zeros(2, 5), torch.zeros(2, 5))
    assert (sig.positive, sig.negative, sig.zero) == (0, 0, 5)
