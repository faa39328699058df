"""Hidden attention of an S6 layer (THEORY.md section 1).

Per channel d the scan output without the skip term D and the gate z is
y^d_l = Σ_{j≤l} P^d_{lj} x^d_j with

    P^d_{lj} = Σ_n C_l[n] · exp(A[d,n] · Σ_{k=j+1..l} Δ^d_k) · Δ^d_j · B_j[n].

With the cumulative sum c^d_l = Σ_{k≤l} Δ^d_k, the inner sum is c^d_l − c^d_j, so
log of the decay is A[d,n] (c^d_l − c^d_j): one (L, L) difference per channel,
masked to j ≤ l *before* the exponential so that nothing exponentiates a
positive number (A < 0, Δ > 0). Cost O(L²·N) per channel; no loop over positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import DataError


def _check(delta, A, B, C) -> None:
    if delta.dim() != 3 or B.dim() != 3 or C.dim() != 3 or A.dim() != 2:
        raise DataError("hidden attention needs delta (batch, D, L), A (D, N), B and C (batch, N, L).")
    batch, dim, length = delta.shape
    if A.shape[0] != dim or B.shape != (batch, A.shape[1], length) or C.shape != B.shape:
        raise DataError(
            f"hidden attention: shapes do not match: delta {tuple(delta.shape)}, A {tuple(A.shape)}, "
            f"B {tuple(B.shape)}, C {tuple(C.shape)}."
        )


def hidden_attention(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                     channels: Sequence[int] | None = None, dtype: torch.dtype = torch.float64,
                     max_elements: int = 1 << 23) -> torch.Tensor:
    """Hidden attention matrices P^d for the chosen channels.

    delta: (batch, D, L) — Δ after bias and softplus; A: (D, N), negative;
    B, C: (batch, N, L); channels: indices into D (all when None).
    Returns P: (batch, len(channels), L, L), lower triangular (P[..., l, j] = 0 for j > l),
    computed in ``dtype`` (float64 by default: the differences of cumulative sums
    lose digits in float32 for long sequences). Channels are processed in groups of
    about ``max_elements`` / (batch·L²) so that the working memory stays bounded.
    """
    _check(delta, A, B, C)
    batch, dim, length = delta.shape
    idx = torch.arange(dim, device=delta.device) if channels is None else \
        torch.as_tensor(list(channels), dtype=torch.long, device=delta.device)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= dim):
        raise DataError(f"hidden attention: channels must lie in 0..{dim - 1}, got {idx.tolist()}.")
    delta = delta.to(dtype)
    A, B, C = A.to(dtype), B.to(dtype), C.to(dtype)
    causal = torch.ones(length, length, dtype=torch.bool, device=delta.device).tril()
    chunk = max(1, max_elements // max(1, batch * length * length))
    out = []
    for start in range(0, idx.numel(), chunk):
        ch = idx[start:start + chunk]
        dl = delta[:, ch, :]                                     # (b, c, L)
        csum = dl.cumsum(-1)
        # gap[l, j] = Σ_{k=j+1..l} Δ_k ≥ 0 on the causal part; the upper part is masked
        gap = (csum[..., :, None] - csum[..., None, :]).clamp_min(0.0)   # (b, c, L, L)
        P = torch.zeros_like(gap)
        for n in range(A.shape[1]):                              # N is small (16)
            log_decay = A[ch, n][None, :, None, None] * gap       # ≤ 0 where causal
            log_decay = log_decay.masked_fill(~causal, float("-inf"))
            CB = C[:, n, :, None] * B[:, n, None, :]              # (b, L, L): C_l[n] B_j[n]
            P += torch.exp(log_decay) * CB[:, None]
        out.append(P * dl[..., None, :])                          # · Δ^d_j
    if not out:
        return delta.new_zeros(batch, 0, length, length)
    return torch.cat(out, dim=1)


def hidden_attention_reference(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                               channels: Sequence[int] | None = None) -> torch.Tensor:
    """Plain loops over (l, j) straight from the formula, float64. Test oracle only.

    Shapes as :func:`hidden_attention`. Returns (batch, len(channels), L, L).
    """
    _check(delta, A, B, C)
    batch, dim, length = delta.shape
    chans = list(range(dim)) if channels is None else list(channels)
    delta, A, B, C = (t.detach().to(torch.float64) for t in (delta, A, B, C))
    P = torch.zeros(batch, len(chans), length, length, dtype=torch.float64)
    for ci, d in enumerate(chans):
        for l in range(length):
            for j in range(l + 1):
                s = delta[:, d, j + 1:l + 1].sum(-1)                          # (b,)
                decay = torch.exp(A[d][None, :] * s[:, None])                  # (b, N)
                P[:, ci, l, j] = (C[:, :, l] * decay * B[:, :, j]).sum(-1) * delta[:, d, j]
    return P


def attention_summary(P: torch.Tensor) -> dict:
    """Scalar descriptions of one hidden-attention matrix P: (L, L), lower triangular.

    - ``diagonal_fraction``: share of Σ|P| on the diagonal (how much a token attends to itself);
    - ``mean_distance``: the |P|-weighted mean of l − j (how far back attention reaches);
    - ``row_abs_sum_mean``: mean over l of Σ_j |P_lj| (the gain of the layer on this channel).
    """
    Pa = P.detach().abs().to(torch.float64)
    total = float(Pa.sum())
    length = P.shape[-1]
    pos = torch.arange(length, dtype=torch.float64)
    dist = (pos[:, None] - pos[None, :]).clamp_min(0)
    return {
        "diagonal_fraction": float(Pa.diagonal().sum()) / total if total > 0 else 0.0,
        "mean_distance": float((Pa * dist).sum()) / total if total > 0 else 0.0,
        "row_abs_sum_mean": float(Pa.sum(-1).mean()) if length else 0.0,
    }
