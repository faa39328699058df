"""Importance-based token reordering (refinement 2, THEORY.md section 6), as plain functions.

Every function works on the mixer's layout: token tensors are (batch, C, L) (channels first,
the sequence last) and scores are (batch, L). Tokens are sorted by *increasing* importance
score, so the most important tokens come last, where the scan's divergence is fastest.

Three ways to apply the ordering:

- :func:`softsort_matrix` + :func:`soft_permute`: SoftSort's relaxed permutation P̂ (rows sum
  to 1) and x' = P̂ x. O(L²) time and memory per sequence; the plain reference.
- :func:`hard_permute`: the exact permutation (argsort + gather, O(L log L) time, O(L·C)
  memory, never an L × L matrix) with a straight-through gradient for the scores computed
  from a banded SoftSort (see :class:`_HardPermute`).
- :func:`soft_restore` / :func:`inverse_permute`: map a result computed in sorted order back
  to the original token order (the soft one is approximate, the hard one exact).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

REORDER_MODES = ("none", "soft", "hard")
REORDER_BRANCHES = ("xz", "x")
# Sorted neighbours on each side that the hard path's straight-through gradient looks at.
DEFAULT_WINDOW = 4


def check_reorder_settings(mode: str, tau: float, power: float, branches: str = "xz") -> None:
    """Raise :class:`ConfigError` (one sentence) for settings that cannot reorder."""
    if mode not in REORDER_MODES:
        raise ConfigError(f"unknown reorder mode {mode!r}; choose one of {', '.join(REORDER_MODES)}.")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
        raise ConfigError(f"reorder_tau must be a number > 0, got {tau!r}.")
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not power > 0:
        raise ConfigError(f"reorder_power must be a number > 0, got {power!r}.")
    if branches not in REORDER_BRANCHES:
        raise ConfigError(f"reorder_branches must be one of {', '.join(REORDER_BRANCHES)} "
                          f"('x': x only, as in the authors' block), got {branches!r}.")


def importance_scores(dt: torch.Tensor, b_delta: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """s_l = kᵀ(S_Δ x_l + b_Δ), THEORY.md section 6: a linear map on the pre-softplus Δ.

    Arguments:
        dt: (batch, D, L) S_Δ x, the step before the bias and the softplus.
        b_delta: (D,) the Δ bias b_Δ.
        k: (D,) the learned importance direction.
    Returns: (batch, L), float32 or wider (float64 stays float64).
    """
    acc = torch.float64 if dt.dtype == torch.float64 else torch.float32
    k = k.to(acc)
    # kᵀ S_Δ x + kᵀ b_Δ, without forming S_Δ x + b_Δ (a second (batch, D, L) tensor)
    return torch.einsum("d,bdl->bl", k, dt.to(acc)) + (k * b_delta.to(acc)).sum()


def _abs_pow(u: torch.Tensor, power: float) -> torch.Tensor:
    """|u|^p with gradient 0 at u = 0 for every p > 0 (p < 1 would give inf·0 = NaN)."""
    a = u.abs()
    if power == 1:
        return a
    nz = a > 0
    return torch.where(nz, torch.where(nz, a, torch.ones_like(a)) ** power, torch.zeros_like(a))


def softsort_matrix(s: torch.Tensor, tau: float = 1.0, power: float = 1.0) -> torch.Tensor:
    """SoftSort's relaxed permutation, sorting by increasing score (THEORY.md section 6).

        P̂_ij = softmax_j(−|sort_desc(−s)_i − (−s)_j|^p / τ) = softmax_j(−|s_(i) − s_j|^p / τ)

    with s_(i) the i-th smallest score. Row i is a distribution over the tokens, peaked at the
    token of rank i; as τ → 0 P̂ becomes the permutation matrix of ``argsort(s)``.

    Arguments:
        s: (batch, L) scores.
    Returns: (batch, L, L), rows sum to 1.
    """
    s_sorted = torch.sort(s, dim=-1).values                     # s_(i), ascending
    logits = -_abs_pow(s_sorted[:, :, None] - s[:, None, :], power) / tau
    return torch.softmax(logits, dim=-1)


def sharpness(P: torch.Tensor) -> float:
    """How far SoftSort's P̂ is from averaging: the mean over rows (and the batch) of the largest
    weight in a row. 1/L for uniform rows, 1 for a permutation matrix (THEORY.md section 6).

    P: (batch, L, L) -> a number in [1/L, 1].
    """
    return float(P.detach().amax(dim=-1).mean())


def soft_permute(P: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x' = P̂ x along the sequence: x'[:, :, i] = Σ_j P̂_ij x[:, :, j].

    Arguments:
        P: (batch, L, L) from :func:`softsort_matrix`.
        x: (batch, C, L).
    Returns: (batch, C, L) in x's dtype.
    """
    return torch.matmul(x, P.transpose(1, 2).to(x.dtype))


def soft_restore(P: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Back from the soft-sorted order: ỹ_j = Σ_i P̂_ij y_i / Σ_i P̂_ij.

    Token j collects the sorted slots that drew on it, weighted by how much they drew. This
    is P̂ᵀ with its rows normalised to sum to 1, the exact inverse when P̂ is a permutation
    matrix (τ → 0). A column sum is never 0: in the row of token j's own rank the logit of j is
    the largest possible (0), so Σ_i P̂_ij ≥ 1/L.

    Arguments:
        P: (batch, L, L); y: (batch, C, L) in sorted order.
    Returns: (batch, C, L) in the original token order.
    """
    Pn = P / P.sum(dim=1, keepdim=True)
    return torch.matmul(y, Pn.to(y.dtype))


def sort_order(s: torch.Tensor) -> torch.Tensor:
    """perm (batch, L) int64 with s[b, perm[b, i]] the i-th smallest score (ties by position)."""
    return torch.argsort(s, dim=-1, stable=True)


def permute_tokens(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """x'[:, :, i] = x[:, :, perm[:, i]]. x: (batch, C, L), perm: (batch, L) -> (batch, C, L)."""
    return torch.gather(x, -1, perm[:, None, :].expand(-1, x.shape[1], -1))


def inverse_permute(y: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`permute_tokens`: ỹ[:, :, perm[:, i]] = y[:, :, i].

    y: (batch, C, L) in sorted order, perm: (batch, L) -> (batch, C, L) in the original order.
    """
    idx = perm[:, None, :].expand(-1, y.shape[1], -1)
    return torch.empty_like(y).scatter_(-1, idx, y)


_BAND_CACHE: dict = {}
# Elements of the (batch, C, chunk, 2w+1) product formed at once by band_dots: a problem up to
# _DOTS_ONE_SHOT elements (128 MiB in float32) is done in one piece (few kernel launches, which
# dominate at small L on a GPU); a larger one in chunks of _DOTS_CHUNK elements (16 MiB), so the
# backward's extra memory stays bounded as L grows.
_DOTS_ONE_SHOT = 2 ** 25
_DOTS_CHUNK = 2 ** 22


def _band_valid(L: int, window: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(valid, target), each (L, 2w+1) for offsets k = −w..w: whether rank i + k exists, and
    i + k clamped into 0..L−1 (cached per shape and device)."""
    key = (L, window, str(device))
    if key not in _BAND_CACHE:
        if len(_BAND_CACHE) > 64:
            _BAND_CACHE.clear()
        pos = torch.arange(L, device=device)[:, None] + torch.arange(-window, window + 1, device=device)
        _BAND_CACHE[key] = ((pos >= 0) & (pos < L), pos.clamp(0, L - 1))
    return _BAND_CACHE[key]


def _band(t: torch.Tensor, window: int) -> torch.Tensor:
    """(..., L) -> (..., L, 2w+1) with out[..., i, k + w] = t[..., i + k], zero outside (a view
    of one padded copy)."""
    return torch.nn.functional.pad(t, (window, window)).unfold(-1, 2 * window + 1, 1)


def band_dots(g: torch.Tensor, x: torch.Tensor, perm: torch.Tensor, window: int) -> torch.Tensor:
    """dots[b, i, k + w] = Σ_c g[b, c, i] · x'[b, c, i + k] for |k| ≤ w (0 outside the sequence),
    with x' = :func:`permute_tokens`(x, perm) formed a chunk at a time, never whole.

    g, x: (batch, C, L), perm: (batch, L) -> (batch, L, 2w+1) in float32 (float64 for float64).
    Above 2^25 products in all, chunks along L keep about 2^22 alive at once.
    """
    acc = torch.float64 if g.dtype == torch.float64 else torch.float32
    b, C, L = g.shape
    K = 2 * window + 1
    per_position = max(1, b * C * K)
    chunk = L if per_position * L <= _DOTS_ONE_SHOT else max(1, _DOTS_CHUNK // per_position)
    parts = []
    for c0 in range(0, L, chunk):
        c1 = min(L, c0 + chunk)
        lo, hi = max(0, c0 - window), min(L, c1 + window)
        # x'[..., c0 − w : c1 + w] with zeros beyond the sequence's ends
        oc = torch.nn.functional.pad(permute_tokens(x, perm[:, lo:hi]).to(acc),
                                     (window - (c0 - lo), window - (hi - c1)))
        parts.append((g[..., c0:c1].to(acc)[..., None] * oc.unfold(-1, K, 1)).sum(1))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def banded_score_grad(s_sorted: torch.Tensor, perm: torch.Tensor, dots: torch.Tensor, tau: float,
                      power: float, window: int) -> torch.Tensor:
    """The straight-through gradient of the scores, from SoftSort restricted to a band.

    Row i of the banded relaxed permutation looks only at the tokens of ranks i−w..i+w:
        a_ik = softmax_k(ℓ_ik),  ℓ_ik = −|s_(i+k) − s_(i)|^p / τ,  |k| ≤ w,
    which is SoftSort's row i with the weights outside the band set to 0 and the rest
    renormalised (identical to SoftSort when w ≥ L − 1). Given dots[b, i, k + w] = ∂loss/∂a_ik =
    G_i · x_(i+k) (G the gradient reaching the sorted tokens), the chain rule through the
    softmax, |·|^p and the sort (∂s_(i)/∂s_perm[i] = 1) gives ∂loss/∂s.

    Arguments:
        s_sorted: (batch, L) the scores in increasing order; perm: (batch, L) from
        :func:`sort_order`; dots: (batch, L, 2w+1) from :func:`band_dots`.
    Returns: (batch, L) in the original token order, s_sorted's dtype.
    """
    L = s_sorted.shape[-1]
    valid, target = _band_valid(L, window, s_sorted.device)
    u = _band(s_sorted, window) - s_sorted[..., None]                   # s_(i+k) − s_(i)
    logits = (-_abs_pow(u, power) / tau).masked_fill(~valid, float("-inf"))
    a = torch.softmax(logits, dim=-1)                                   # 0 outside the sequence
    dots = dots.to(a.dtype)
    g_logit = a * (dots - (a * dots).sum(-1, keepdim=True))
    # dℓ/du = −(p/τ)|u|^{p−1} sign(u), taken as 0 at u = 0
    if power == 1:
        g_u = g_logit * torch.sign(u) * (-1.0 / tau)
    else:
        au = u.abs()
        nz = au > 0
        slope = torch.where(nz, torch.where(nz, au, torch.ones_like(au)) ** (power - 1), torch.zeros_like(au))
        g_u = g_logit * slope * torch.sign(u) * (-power / tau)
    # u_ik = s_(i+k) − s_(i): +g_u to rank i+k, −g_u to rank i (g_u is 0 outside the sequence)
    g_sorted = (-g_u.sum(-1)).scatter_add_(-1, target.reshape(1, -1).expand(g_u.shape[0], -1),
                                           g_u.reshape(g_u.shape[0], -1))
    return torch.empty_like(g_sorted).scatter_(-1, perm, g_sorted)


class _HardPermute(torch.autograd.Function):
    """Exact sort of the tokens with a straight-through gradient for the scores.

    Forward: perm = argsort(s); each tensor gathered along L (no L × L matrix).
    Backward:
      * tensors: the exact transpose of the permutation (a scatter), as for any gather;
      * scores: the gradient SoftSort's action P̂x would receive — the straight-through rule
        of ``hard=True`` SoftSort, forward P, backward ∂(P̂x) — but with P̂ restricted to the
        2w+1 nearest ranks of each row (:func:`banded_score_grad`). The full soft gradient
        needs every pair (i, j); its terms fall off as exp(−|s_(i) − s_j|^p/τ), so the band
        keeps the largest ones. For w ≥ L − 1 it is SoftSort's gradient exactly; for fixed w it
        approaches it in direction as τ → 0 (tests measure both). Cost O(L·w·C) time; memory
        O(L·w) plus a bounded chunk of products (the sorted tensors are re-gathered from the
        saved inputs a chunk at a time).
    """

    @staticmethod
    def forward(ctx, s, tau, power, window, *xs):
        perm = sort_order(s.detach())
        outs = tuple(permute_tokens(x, perm) for x in xs)
        # the inputs, not the sorted copies: the caller keeps x alive anyway, and the backward
        # re-gathers the band it needs chunk by chunk
        ctx.save_for_backward(s, perm, *xs)
        ctx.settings = (tau, power, window)
        ctx.mark_non_differentiable(perm)
        return (*outs, perm)

    @staticmethod
    def backward(ctx, *grads):
        grads = grads[:-1]            # the last output, perm, has no gradient
        s, perm, *xs = ctx.saved_tensors
        tau, power, window = ctx.settings
        grad_xs = tuple(None if g is None else inverse_permute(g, perm) for g in grads)
        grad_s = None
        if ctx.needs_input_grad[0]:
            acc = torch.float64 if s.dtype == torch.float64 else torch.float32
            dots = None
            for g, x in zip(grads, xs):
                if g is not None:
                    d = band_dots(g, x, perm, window)
                    dots = d if dots is None else dots + d
            if dots is None:
                return (None, None, None, None, *grad_xs)
            s_sorted = s.detach().to(acc).gather(-1, perm)
            grad_s = banded_score_grad(s_sorted, perm, dots, tau, power, window).to(s.dtype)
        return (grad_s, None, None, None, *grad_xs)


def hard_permute(s: torch.Tensor, *xs: torch.Tensor, tau: float = 1.0, power: float = 1.0,
                 window: int = DEFAULT_WINDOW) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Sort the tokens of every tensor in ``xs`` by increasing score, exactly.

    Arguments:
        s: (batch, L) scores (gradient: straight-through, see :class:`_HardPermute`).
        xs: tensors (batch, C_i, L), all sorted with the same permutation.
        tau, power: SoftSort's τ and p for the surrogate gradient.
        window: w, ranks on each side the surrogate looks at (≥ 0).
    Returns: (the sorted tensors, perm (batch, L) for :func:`inverse_permute`).
    """
    if window < 0:
        raise ConfigError(f"window must be >= 0, got {window}.")
    *outs, perm = _HardPermute.apply(s, float(tau), float(power), int(window), *xs)
    return tuple(outs), perm
