"""The continuous-time token system and its vector field (THEORY.md section 2).

Tokens x ∈ R^{L×D} move by

    dx_l/dt = Σ_{j≤l} P_{lj}(x) x_j,
    P^d_{lj} = Σ_n (S_C x_l)[n] · exp(A[d,n] Σ_{k=j+1..l} Δ^d_k) · Δ^d_j · (S_B x_j)[n],
    Δ_j = softplus(S_Δ x_j + b_Δ).

The right-hand side is one S6 layer applied to the current tokens (B_j = S_B x_j,
C_l = S_C x_l, skip term D = 0, no gate), so :func:`vector_field` costs one
selective scan, O(L·D·N). :func:`vector_field_naive` forms P explicitly,
O(L²·D·N), and is kept only as the test oracle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import DataError
from ..ops import selective_scan


def _as_tensor(value, name: str, dtype=torch.float64) -> torch.Tensor:
    try:
        t = torch.as_tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"parameter {name} is not a numeric array ({exc}).") from None
    return t


@dataclass
class TokenSystem:
    """Parameters of the continuous-time system.

    S_B, S_C: (N, D); S_Delta: (D, D); b_Delta: (D,); A: (D, N), every entry < 0.
    """

    S_B: torch.Tensor
    S_C: torch.Tensor
    S_Delta: torch.Tensor
    b_Delta: torch.Tensor
    A: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("S_B", "S_C", "S_Delta", "b_Delta", "A"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor):
                setattr(self, name, _as_tensor(t, name))
        if self.S_B.dim() != 2:
            raise DataError(f"S_B must be a matrix (N, D), got shape {tuple(self.S_B.shape)}.")
        n, d = self.S_B.shape
        expect = {"S_C": (n, d), "S_Delta": (d, d), "b_Delta": (d,), "A": (d, n)}
        for name, shape in expect.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise DataError(f"{name} must have shape {shape} to match S_B (N={n}, D={d}), got {got}.")
        for name in ("S_B", "S_C", "S_Delta", "b_Delta", "A"):
            if not torch.isfinite(getattr(self, name)).all():
                raise DataError(f"parameter {name} contains NaN or infinite values.")
        if not (self.A < 0).all():
            raise DataError("the state matrix A must be negative everywhere (decay a > 0).")

    # ----- constructors -------------------------------------------------------------
    @classmethod
    def from_decay(cls, S_B, S_C, S_Delta, a, b_Delta=None) -> TokenSystem:
        """A = −a ⊗ 1_N (the paper's simplification). a: (D,) or a scalar, all > 0."""
        S_B = _as_tensor(S_B, "S_B")
        if S_B.dim() != 2:
            raise DataError(f"S_B must be a matrix (N, D), got shape {tuple(S_B.shape)}.")
        n, d = S_B.shape
        a = _as_tensor(a, "a")
        if a.dim() == 0:
            a = a.expand(d)
        if tuple(a.shape) != (d,):
            raise DataError(f"decay a must have shape ({d},) or be a scalar, got {tuple(a.shape)}.")
        if not (a > 0).all():
            raise DataError("decay a must be positive (a > 0).")
        b = torch.zeros(d, dtype=torch.float64) if b_Delta is None else _as_tensor(b_Delta, "b_Delta")
        return cls(S_B, _as_tensor(S_C, "S_C"), _as_tensor(S_Delta, "S_Delta"), b, -a[:, None].expand(d, n).clone())

    @classmethod
    def one_dim(cls, mu: float, s: float, a: float, b: float = 0.0) -> TokenSystem:
        """The D = N = 1 system with μ = S_Cᵀ S_B, S_Δ = s, decay a, bias b.

        μ is split as S_B = sign(μ)·√|μ|, S_C = √|μ|.
        """
        for name, v in (("mu", mu), ("s_delta", s), ("a", a), ("b_delta", b)):
            if not math.isfinite(float(v)):
                raise DataError(f"{name} must be a finite number, got {v}.")
        root = math.sqrt(abs(mu))
        return cls.from_decay([[math.copysign(root, mu)]], [[root]], [[s]], [a], [b])

    @classmethod
    def from_params(cls, params: dict) -> TokenSystem:
        """From a dict of nested lists: S_B, S_C, S_Delta, optional b_Delta, and a or A."""
        if not isinstance(params, dict):
            raise DataError("the parameter file must hold a JSON object with S_B, S_C, S_Delta and a or A.")
        missing = [k for k in ("S_B", "S_C", "S_Delta") if k not in params]
        if missing:
            raise DataError(f"the parameters lack {', '.join(missing)}.")
        if ("a" in params) == ("A" in params):
            raise DataError("give exactly one of a (decay per channel) or A (state matrix), not both or neither.")
        unknown = sorted(set(params) - {"S_B", "S_C", "S_Delta", "b_Delta", "a", "A"})
        if unknown:
            raise DataError(f"unknown parameter name(s) {', '.join(unknown)}.")
        S_B = _as_tensor(params["S_B"], "S_B")
        if S_B.dim() != 2:
            raise DataError(f"S_B must be a matrix (N, D), got shape {tuple(S_B.shape)}.")
        b = params.get("b_Delta")
        if "a" in params:
            return cls.from_decay(S_B, params["S_C"], params["S_Delta"], params["a"], b)
        d = S_B.shape[1]
        b = torch.zeros(d, dtype=torch.float64) if b is None else _as_tensor(b, "b_Delta")
        return cls(S_B, _as_tensor(params["S_C"], "S_C"), _as_tensor(params["S_Delta"], "S_Delta"), b,
                   _as_tensor(params["A"], "A"))

    @classmethod
    def random(cls, dim: int, state: int, seed: int = 0) -> TokenSystem:
        """Gaussian S_B, S_C, S_Δ with entries of variance 1/D, b_Δ = 0, a ~ U(0.5, 1.5)."""
        if dim < 1 or state < 1:
            raise DataError(f"dimension and state size must be ≥ 1, got D={dim}, N={state}.")
        g = torch.Generator().manual_seed(seed)
        scale = 1.0 / math.sqrt(dim)
        S_B = torch.randn(state, dim, generator=g, dtype=torch.float64) * scale
        S_C = torch.randn(state, dim, generator=g, dtype=torch.float64) * scale
        S_Delta = torch.randn(dim, dim, generator=g, dtype=torch.float64) * scale
        a = 0.5 + torch.rand(dim, generator=g, dtype=torch.float64)
        return cls.from_decay(S_B, S_C, S_Delta, a)

    # ----- views -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.S_B.shape[1]

    @property
    def state(self) -> int:
        return self.S_B.shape[0]

    @property
    def io_matrix(self) -> torch.Tensor:
        """M = S_Cᵀ S_B: (D, D)."""
        return self.S_C.T @ self.S_B

    @property
    def uniform_decay(self) -> bool:
        """True when A = −a ⊗ 1_N (every state of a channel decays alike)."""
        return bool((self.A == self.A[:, :1]).all())

    def to(self, dtype=None, device=None) -> TokenSystem:
        def conv(t):
            return t.to(dtype=dtype, device=device)

        return TokenSystem(conv(self.S_B), conv(self.S_C), conv(self.S_Delta), conv(self.b_Delta), conv(self.A))

    # ----- the flow, as the integrator calls it (tokendyn.dynamics.integrate.FlowSystem) -----
    def vector_field(self, x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """dx/dt by one selective scan, :func:`vector_field`. x: (batch, L, D) -> (batch, L, D)."""
        return vector_field(self, x, backend)

    def vector_field_naive(self, x: torch.Tensor) -> torch.Tensor:
        """dx/dt by the explicit sum, :func:`vector_field_naive`. x: (batch, L, D) -> (batch, L, D)."""
        return vector_field_naive(self, x)

    def as_dict(self) -> dict:
        """Nested lists, readable back by :meth:`from_params`."""
        out = {k: getattr(self, k).tolist() for k in ("S_B", "S_C", "S_Delta", "b_Delta")}
        if self.uniform_decay:
            out["a"] = (-self.A[:, 0]).tolist()
        else:
            out["A"] = self.A.tolist()
        return out


def _align(system: TokenSystem, x: torch.Tensor) -> TokenSystem:
    if system.S_B.dtype != x.dtype or system.S_B.device != x.device:
        return system.to(dtype=x.dtype, device=x.device)
    return system


def _check_tokens(system: TokenSystem, x: torch.Tensor) -> None:
    if x.dim() != 3 or x.shape[-1] != system.dim:
        raise DataError(f"tokens must have shape (batch, L, D={system.dim}), got {tuple(x.shape)}.")


def vector_field(system: TokenSystem, x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """dx/dt by one selective scan. x: (batch, L, D) -> (batch, L, D)."""
    _check_tokens(system, x)
    p = _align(system, x)
    u = x.transpose(1, 2)                                             # (batch, D, L)
    # products on the (batch, L, D) side: plain matmuls, about twice as fast as the einsums over
    # (batch, D, L) on the CPU, where the flow of a real layer spends most of its time
    delta = F.softplus(x @ p.S_Delta.T + p.b_Delta).transpose(1, 2)   # (batch, D, L)
    B = (x @ p.S_B.T).transpose(1, 2)                                 # (batch, N, L)
    C = (x @ p.S_C.T).transpose(1, 2)
    y = selective_scan(u.contiguous(), delta.contiguous(), p.A, B.contiguous(), C.contiguous(),
                       delta_softplus=False, backend=backend)   # the ops dispatcher decides what "auto" means
    return y.transpose(1, 2)


def vector_field_naive(system: TokenSystem, x: torch.Tensor, block: int = 256) -> torch.Tensor:
    """dx/dt by the explicit sum Σ_{j≤l} P_{lj} x_j (test oracle, O(L²·D·N)).

    x: (batch, L, D) -> (batch, L, D). Rows l are processed ``block`` at a time so that
    memory stays O(block·L·D·N).
    """
    _check_tokens(system, x)
    p = _align(system, x)
    delta = F.softplus(x @ p.S_Delta.T + p.b_Delta)                 # (b, L, D)
    Bx = x @ p.S_B.T                                                  # (b, L, N)
    Cx = x @ p.S_C.T
    cum = torch.cumsum(delta, dim=1)                                  # Σ_{k≤l} Δ_k
    L = x.shape[1]
    out = torch.empty_like(x)
    j = torch.arange(L, device=x.device)
    uniform = p.uniform_decay
    for start in range(0, L, block):
        stop = min(start + block, L)
        rows = torch.arange(start, stop, device=x.device)
        causal = (j[None, :] <= rows[:, None])                        # (r, L)
        # Σ_{k=j+1..l} Δ_k = cum_l − cum_j, only where j ≤ l
        gap = cum[:, start:stop, None, :] - cum[:, None, :, :]        # (b, r, L, D)
        gap = torch.where(causal[None, :, :, None], gap, torch.zeros((), dtype=x.dtype, device=x.device))
        w = delta[:, None, :, :] * x[:, None, :, :]                   # Δ_j x_j: (b, 1, L, D)
        if uniform:
            cb = torch.einsum("brn,bjn->brj", Cx[:, start:stop], Bx)  # x_lᵀ S_Cᵀ S_B x_j
            cb = cb * causal[None]
            decay = torch.exp(p.A[:, 0] * gap)                        # (b, r, L, D)
            out[:, start:stop] = torch.einsum("brj,brjd->brd", cb, decay * w)
        else:
            decay = torch.exp(p.A[None, None, None] * gap[..., None])  # (b, r, L, D, N)
            terms = torch.einsum("brn,bjn,brjdn->brjd", Cx[:, start:stop], Bx, decay)
            out[:, start:stop] = torch.einsum("brjd,brjd->brd", terms * causal[None, :, :, None], w)
    return out
