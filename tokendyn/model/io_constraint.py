"""Refinement 1: a prescribed sign for the input-output matrix M = S_Cᵀ S_B (THEORY.md section 5).

Per layer (N = d_state, D = d_inner, N ≤ D):

    U ∈ R^{N×D}, row i: zeros before column i, 1 at column i, free entries after it
    λ_i = s_i · (softplus(θ_i) + ε),   s_i = +1 (positive), −1 (negative),
                                       mixed, mixed_margin: +1 for the first ⌊N/2⌋ rows, −1 for
                                       the rest; ε = 0 for mixed (the authors' code has none)
    S_C = U,  S_B = diag(λ) U,  so  M = Uᵀ diag(λ) U.

U has rank N (its first N columns form a unit upper-triangular matrix), so by Sylvester's
law of inertia M is symmetric with exactly as many positive (negative) eigenvalues as λ
has positive (negative) entries, and D − N zero ones: "positive definite" holds on the
N-dimensional range of M only (docs/models.md).

Stored parameters of the ``io_factor`` submodule (the checkpoint names say what they are):
    io_factor.U_upper  (N(N−1)/2,)  the strictly-upper entries of U[:, :N], row by row
    io_factor.U_right  (N, D − N)   U[:, N:]
    io_factor.theta    (N,)         θ
and the mixer's ``x_proj`` keeps only the R dt rows, an ordinary (R, D) weight. The signs
and ε come from the config (``io_constraint``, ``io_margin``), not from the weights.

Two paths compute the same thing: :meth:`IOFactor.forward` is the plain one (autograd through
a handful of tensor operations, the reference), and :func:`effective_weight` is the one the
mixer runs: one autograd node with a hand-written backward that writes [dt; S_B; S_C] into
one buffer. A training step is bound by the host's time per operation on a GPU, and the plain
path's ~25 small operations per layer (forward and backward) cost more there than the rest
of the constraint; tests compare the two in float64 (values and gradients, gradcheck).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from .families import register_variant

# The sign of the nonzero eigenvalues of M = S_Cᵀ S_B. "mixed" is the authors' mixed setting (no
# margin ε); "mixed_margin" is the same signs with ε (the project's variant, THEORY.md section 5)
IO_CONSTRAINTS = ("none", "positive", "negative", "mixed", "mixed_margin")


@dataclass(frozen=True)
class IOConstraintSettings:
    """The variant's settings: io_constraint (one of :data:`IO_CONSTRAINTS`; ``"none"``: off) and
    io_margin, ε > 0 (not used by the authors' ``mixed``)."""

    io_constraint: str = "none"
    io_margin: float = 0.7

    def __post_init__(self):
        if self.io_constraint not in IO_CONSTRAINTS:
            raise ConfigError(f"unknown io_constraint {self.io_constraint!r}; choose one of "
                              f"{', '.join(IO_CONSTRAINTS)}.")
        m = self.io_margin
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m < math.inf:
            raise ConfigError(f"io_margin must be a positive finite number, got {m!r}.")

    def applies(self, layer_idx: int | None) -> bool:
        """Every layer is constrained unless io_constraint is "none"."""
        return self.io_constraint != "none"

    def check(self, config) -> None:
        """U (N, D) has rank N only for N <= D."""
        if self.io_constraint != "none" and config.d_state > config.d_inner:
            raise ConfigError(f"io_constraint {self.io_constraint!r} needs d_state <= d_inner, got d_state "
                              f"{config.d_state} and d_inner {config.d_inner} (S_Cᵀ S_B has rank at most d_inner).")


def io_signs(constraint: str, n: int) -> torch.Tensor:
    """The signs s (n,) of λ for ``constraint`` (positive | negative | mixed | mixed_margin), float32."""
    if constraint == "positive":
        return torch.ones(n)
    if constraint == "negative":
        return -torch.ones(n)
    if constraint in ("mixed", "mixed_margin"):
        pos = n // 2                # ⌊N/2⌋ positive first, then ⌈N/2⌉ negative, as the authors' code
        return torch.cat([torch.ones(pos), -torch.ones(n - pos)])
    raise ValueError(f"no signs for io_constraint {constraint!r}")


class IOFactor(nn.Module):
    """The factorisation S_C = U, S_B = diag(λ) U of THEORY.md section 5 for one layer.

    ``IOFactor(n, d, constraint, margin)``; ``forward()`` -> (S_B (N, D), S_C (N, D)).
    The signs (a non-persistent buffer) follow from ``constraint``; ``margin`` is ε > 0, used by
    positive, negative and mixed_margin; the authors' mixed has none (ε = 0 whatever ``margin``).
    Every parameter here builds S_B and S_C, so every one is under weight decay (marked
    ``_weight_decay``), as x_proj's whole matrix is in an unconstrained mixer.
    """

    def __init__(self, n: int, d: int, constraint: str, margin: float):
        super().__init__()
        if not 1 <= n <= d:
            raise ValueError(f"the io constraint needs 1 <= d_state <= d_inner, got {n} and {d}")
        self.n, self.d, self.constraint = n, d, constraint
        self.margin = 0.0 if constraint == "mixed" else float(margin)
        self.U_upper = nn.Parameter(torch.zeros(n * (n - 1) // 2))
        self.U_right = nn.Parameter(torch.zeros(n, d - n))
        self.theta = nn.Parameter(torch.zeros(n))
        for p in (self.U_upper, self.U_right, self.theta):
            p._weight_decay = True     # one decay rule for S_B, S_C in every setting (train.loop.param_groups)
        rows, cols = torch.triu_indices(n, n, offset=1)
        # derived from n and the config, so not stored in checkpoints
        self.register_buffer("upper_rows", rows, persistent=False)
        self.register_buffer("upper_cols", cols, persistent=False)
        self.register_buffer("signs", io_signs(constraint, n), persistent=False)
        # positions of the free entries in U (N, D) flattened row by row
        self.register_buffer("upper_flat", rows * d + cols, persistent=False)

    def U(self) -> torch.Tensor:
        """U (N, D): unit diagonal, zeros below it, the free entries above it."""
        n = self.n
        eye = torch.eye(n, dtype=self.U_upper.dtype, device=self.U_upper.device)
        square = eye.index_put((self.upper_rows, self.upper_cols), self.U_upper)
        return torch.cat([square, self.U_right], dim=1)

    def lam(self) -> torch.Tensor:
        """λ (N,) = signs · (softplus(θ) + ε)."""
        return self.signs.to(self.theta.dtype) * (F.softplus(self.theta) + self.margin)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(S_B, S_C), each (N, D), through plain tensor operations (the reference path)."""
        U = self.U()
        return self.lam()[:, None] * U, U

    @torch.no_grad()
    def init_from(self, S_C: torch.Tensor) -> None:
        """Initialise U's free entries from an unconstrained S_C (N, D) (its entries above
        the diagonal), and θ = 0, so |λ_i| = ln 2 + ε."""
        self.U_upper.copy_(S_C[:, :self.n][self.upper_rows, self.upper_cols])
        self.U_right.copy_(S_C[:, self.n:])
        self.theta.zero_()

    def extra_repr(self) -> str:
        return f"N={self.n}, D={self.d}, constraint={self.constraint}, margin={self.margin}"


class _EffectiveWeight(torch.autograd.Function):
    """[dt; S_B; S_C] (R + 2N, D) from the dt rows and the factor's parameters, one node.

    Backward, with G_B, G_C the gradients of the S_B and S_C rows and λ' = s · sigmoid(θ)
    (dλ/dθ): dU = G_C + λ ⊙ G_B (rows), dθ = λ' ⊙ rowsum(G_B ⊙ U), and the free entries'
    gradients are dU at their positions.
    """

    @staticmethod
    def forward(ctx, dt_rows, U_upper, U_right, theta, signs, upper_flat, margin: float):
        R, N = dt_rows.shape[0], theta.shape[0]
        W = dt_rows.new_empty(R + 2 * N, dt_rows.shape[1])
        W[:R] = dt_rows
        U = W[R + N:]                               # contiguous rows: U.view(-1) is U row by row
        U[:, N:] = U_right
        U[:, :N] = 0
        U.diagonal().fill_(1)
        U.view(-1).index_copy_(0, upper_flat, U_upper)
        lam = F.softplus(theta).add_(margin).mul_(signs)
        torch.mul(U, lam[:, None], out=W[R:R + N])
        ctx.save_for_backward(W, lam, signs * torch.sigmoid(theta), upper_flat)
        ctx.sizes = (R, N)
        return W

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        W, lam, dlam, upper_flat = ctx.saved_tensors
        R, N = ctx.sizes
        g_B = grad[R:R + N]
        g_U = torch.addcmul(grad[R + N:], g_B, lam[:, None])
        g_theta = torch.linalg.vecdot(g_B, W[R + N:]) * dlam
        return grad[:R], g_U.view(-1).index_select(0, upper_flat), g_U[:, N:], g_theta, None, None, None


def effective_weight(dt_rows: torch.Tensor, factor: IOFactor) -> torch.Tensor:
    """The effective x_proj weight [dt_rows; S_B; S_C] (R + 2N, D) of a constrained mixer.

    dt_rows: (R, D); ``factor``'s parameters give S_B, S_C (N, D) as :meth:`IOFactor.forward`
    does. Differentiable in dt_rows and the factor's parameters.
    """
    return _EffectiveWeight.apply(dt_rows, factor.U_upper, factor.U_right, factor.theta,
                                  factor.signs.to(factor.theta.dtype), factor.upper_flat, factor.margin)


class IOConstrained:
    """Mixin for a mixer family with ``x_proj`` rows [dt; S_B; S_C]: S_B and S_C come from an
    :class:`IOFactor` (``io_factor``), and ``x_proj`` keeps the R dt rows only.

    Overrides :meth:`effective_x_proj_weight` (rows [dt; S_B; S_C], in the autograd graph),
    which is what the family's ``selective_inputs`` (full forward and recurrent step),
    ``io_parameters`` (analysis) and ``plain_state_dict`` (export) read.
    """

    def __init__(self, config, layer_idx: int | None = None):
        super().__init__(config, layer_idx=layer_idx)
        R, N, D = self.dt_rank, self.d_state, self.d_inner
        settings = config.variants["io_constraint"]
        full = self.x_proj.weight
        # The unconstrained init drew x_proj already: keep its dt rows and take U's free
        # entries from its C rows (same distribution and random stream as an
        # unconstrained model of the same seed).
        self.x_proj = nn.Linear(D, R, bias=False, device=full.device, dtype=full.dtype)
        self.io_factor = IOFactor(N, D, settings.io_constraint, settings.io_margin).to(device=full.device,
                                                                                   dtype=full.dtype)
        with torch.no_grad():
            self.x_proj.weight.copy_(full[:R])
            self.io_factor.init_from(full[R + N:])

    def effective_x_proj_weight(self) -> torch.Tensor:
        return effective_weight(self.x_proj.weight, self.io_factor)


register_variant("io_constraint", IOConstraintSettings, IOConstrained, families=("mamba1",))
