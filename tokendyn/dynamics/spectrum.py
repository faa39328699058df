"""Spectrum of the input-output matrix M = S_Cᵀ S_B (THEORY.md section 2).

M is D×D but has rank ≤ N, and its symmetric part M_s = (M + Mᵀ)/2 has rank ≤ 2N.
With W = [S_B; S_C] (2N×D) and K = [[0, I], [I, 0]], M_s = ½ Wᵀ K W. Writing
Wᵀ = Q R (thin QR, Q: D×2N orthonormal columns) gives M_s = Q (½ R K Rᵀ) Qᵀ, so the
nonzero eigenvalues of M_s are those of the 2N×2N symmetric matrix ½ R K Rᵀ, and
the remaining D − 2N eigenvalues are exactly zero. The nonzero eigenvalues of M
itself are those of the N×N matrix S_B S_Cᵀ. Both facts are [derived] and checked
against dense eigensolvers in tests/test_spectrum.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


def io_matrix(S_B: torch.Tensor, S_C: torch.Tensor) -> torch.Tensor:
    """M = S_Cᵀ S_B. S_B, S_C: (N, D) -> (D, D)."""
    return S_C.transpose(-1, -2) @ S_B


def symmetric_io_eigvals(S_B: torch.Tensor, S_C: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of M_s that can be nonzero, via the 2N×2N problem, ascending.

    S_B, S_C: (N, D). Returns (min(2N, D),) real eigenvalues (float64); the other
    D − len eigenvalues of M_s are zero.
    """
    S_B = S_B.detach().to(torch.float64)
    S_C = S_C.detach().to(torch.float64)
    n, d = S_B.shape
    W = torch.cat([S_B, S_C], dim=0)                   # (2N, D)
    if 2 * n >= d:                                      # small D: dense is cheaper
        M = io_matrix(S_B, S_C)
        return torch.linalg.eigvalsh(0.5 * (M + M.T))
    R = torch.linalg.qr(W.T, mode="r").R                # (2N, 2N), Wᵀ = Q R
    K = torch.zeros(2 * n, 2 * n, dtype=W.dtype, device=W.device)
    eye = torch.eye(n, dtype=W.dtype, device=W.device)
    K[:n, n:] = eye
    K[n:, :n] = eye
    small = 0.5 * R @ K @ R.T
    return torch.linalg.eigvalsh(0.5 * (small + small.T))


def io_eigvals(S_B: torch.Tensor, S_C: torch.Tensor) -> torch.Tensor:
    """The up-to-N nonzero eigenvalues of M = S_Cᵀ S_B (complex), via S_B S_Cᵀ (N×N).

    S_B, S_C: (N, D). Returns (min(N, D),) complex128, sorted by real part.
    """
    S_B = S_B.detach().to(torch.float64)
    S_C = S_C.detach().to(torch.float64)
    # the smaller of the two products carries all the nonzero eigenvalues
    small = S_B @ S_C.T if S_B.shape[0] <= S_B.shape[1] else io_matrix(S_B, S_C)
    ev = torch.linalg.eigvals(small)
    return ev[torch.argsort(ev.real)]


@dataclass
class EigenSignature:
    """Counts of positive, negative and (numerically) zero eigenvalues of M_s."""

    positive: int
    negative: int
    zero: int
    largest: float
    smallest: float

    def as_dict(self) -> dict:
        return asdict(self)


def eigen_signature(S_B: torch.Tensor, S_C: torch.Tensor, rtol: float = 1e-8) -> EigenSignature:
    """Signature of the symmetric part of S_Cᵀ S_B, counted on all D eigenvalues.

    An eigenvalue counts as zero when |λ| ≤ rtol · max|λ| (or all are zero).
    S_B, S_C: (N, D).
    """
    d = S_B.shape[1]
    ev = symmetric_io_eigvals(S_B, S_C)
    scale = float(ev.abs().max()) if ev.numel() else 0.0
    tol = rtol * scale
    pos = int((ev > tol).sum()) if scale > 0 else 0
    neg = int((ev < -tol).sum()) if scale > 0 else 0
    # eigenvalues of M_s outside the small problem are exactly zero
    largest = max(float(ev.max()), 0.0) if d > ev.numel() else float(ev.max())
    smallest = min(float(ev.min()), 0.0) if d > ev.numel() else float(ev.min())
    return EigenSignature(positive=pos, negative=neg, zero=d - pos - neg, largest=largest, smallest=smallest)
