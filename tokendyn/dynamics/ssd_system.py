"""The continuous-time token system of a Mamba-2 (SSD) layer (docs/THEORY.md, "Mamba-2 (SSD)").

Residual-stream tokens h ∈ R^{L×d} move by

    dh_l/dt = Σ_k W_out^{(k)} Σ_{j≤l} (h_lᵀ M_g(k) h_j) · dt_{j,k} · exp(−a_k Σ_{i=j+1..l} dt_{i,k}) · W_x^{(k)} h_j,
    M_g = W_C^{(g)ᵀ} W_B^{(g)} (d×d, rank ≤ N),  dt_{j,k} = softplus(W_dt^{(k)} h_j + b_dt^{(k)}),

head k reading group g(k) = k // (H/G). This is the Mamba-2 block with the convolution, the gate z,
the gated RMSNorm and D dropped, stacked with shared parameters, depth become time.

The right-hand side is one SSD scan (x = W_x h, B = W_B h, C = W_C h, A = −a) followed by out_proj,
so :func:`ssd_vector_field` costs O(L·(H·P + G·N)·d) plus the scan; :func:`ssd_vector_field_naive`
writes the double sum out with the d×d matrices M_g and V_k = W_out^{(k)} W_x^{(k)}, O(L²·H·d²),
and is the test oracle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..ops import ssd_scan

FIELDS = ("W_x", "W_B", "W_C", "W_dt", "b_dt", "a", "W_out")


def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise ConfigError(f"SSD parameter {name} must be a floating tensor, got dtype {value.dtype}.")
        return value
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"SSD parameter {name} is not a numeric array ({exc}).") from None


@dataclass
class SSDSystem:
    """Parameters of the idealised Mamba-2 layer, one set shared by every depth.

    W_x: (H, P, d), the x rows of in_proj per head; W_B, W_C: (G, N, d), the B and C rows per group;
    W_dt: (H, d), b_dt: (H,), the step size per head; a: (H,), the decay per head, > 0 (A = −a);
    W_out: (d, H, P), out_proj. H must be a multiple of G.
    """

    W_x: torch.Tensor
    W_B: torch.Tensor
    W_C: torch.Tensor
    W_dt: torch.Tensor
    b_dt: torch.Tensor
    a: torch.Tensor
    W_out: torch.Tensor

    def __post_init__(self) -> None:
        for name in FIELDS:
            setattr(self, name, _as_tensor(getattr(self, name), name))
        # one dtype for all, so that casting to the tokens' dtype is one check of W_x
        dtype = self.W_x.dtype
        for name in FIELDS[1:]:
            dtype = torch.promote_types(dtype, getattr(self, name).dtype)
        for name in FIELDS:
            setattr(self, name, getattr(self, name).to(dtype))
        if self.W_x.dim() != 3:
            raise ConfigError(f"W_x must be (heads, head_dim, d), got shape {tuple(self.W_x.shape)}.")
        if self.W_B.dim() != 3:
            raise ConfigError(f"W_B must be (n_groups, state, d), got shape {tuple(self.W_B.shape)}.")
        H, P, d = self.W_x.shape
        G, N = self.W_B.shape[:2]
        if min(H, P, d, G, N) < 1:
            raise ConfigError(f"every size must be at least 1, got H={H}, P={P}, d={d}, G={G}, N={N}.")
        expect = {"W_B": (G, N, d), "W_C": (G, N, d), "W_dt": (H, d), "b_dt": (H,), "a": (H,),
                  "W_out": (d, H, P)}
        for name, shape in expect.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ConfigError(f"{name} must have shape {shape} to match W_x (H={H}, P={P}, d={d}) "
                                  f"and W_B (G={G}, N={N}), got {got}.")
        if H % G:
            raise ConfigError(f"the head count H={H} is not divisible by the group count G={G}.")
        for name in FIELDS:
            if not torch.isfinite(getattr(self, name)).all():
                raise ConfigError(f"SSD parameter {name} contains NaN or infinite values.")
        if not (self.a > 0).all():
            raise ConfigError("the decay a must be positive for every head (A = −a < 0).")

    # ----- constructors -------------------------------------------------------------------
    @classmethod
    def one_dim(cls, w_x: float, w_B: float, w_C: float, w_dt: float, a: float, w_out: float,
                b_dt: float = 0.0) -> SSDSystem:
        """d = H = P = G = N = 1: the paper's 1-D system with μ = w_out·w_x·w_C·w_B, s = w_dt."""
        for name, v in (("w_x", w_x), ("w_B", w_B), ("w_C", w_C), ("w_dt", w_dt), ("a", a),
                        ("w_out", w_out), ("b_dt", b_dt)):
            if not math.isfinite(float(v)):
                raise ConfigError(f"{name} must be a finite number, got {v}.")
        return cls([[[w_x]]], [[[w_B]]], [[[w_C]]], [[w_dt]], [b_dt], [a], [[[w_out]]])

    @classmethod
    def random(cls, dim: int, heads: int = 1, head_dim: int | None = None, groups: int = 1,
               state: int | None = None, seed: int = 0, bias: bool = False) -> SSDSystem:
        """Gaussian weights (in_proj rows of variance 1/d, out_proj of variance 1/(H·P), W_dt of
        variance 1/d), b_dt = 0 unless ``bias`` (then N(0, 0.3²)), a ~ U(0.5, 1.5).
        head_dim and state default to d."""
        P = dim if head_dim is None else head_dim
        N = dim if state is None else state
        if min(dim, heads, P, groups, N) < 1:
            raise ConfigError(f"every size must be at least 1, got d={dim}, H={heads}, P={P}, G={groups}, N={N}.")
        g = torch.Generator().manual_seed(seed)

        def r(*shape, scale=1.0):
            return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

        s_in = 1.0 / math.sqrt(dim)
        return cls(W_x=r(heads, P, dim, scale=s_in), W_B=r(groups, N, dim, scale=s_in),
                   W_C=r(groups, N, dim, scale=s_in), W_dt=r(heads, dim, scale=s_in),
                   b_dt=r(heads, scale=0.3) if bias else torch.zeros(heads, dtype=torch.float64),
                   a=0.5 + torch.rand(heads, generator=g, dtype=torch.float64),
                   W_out=r(dim, heads, P, scale=1.0 / math.sqrt(heads * P)))

    # ----- sizes and views ------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """d, the token (residual-stream) dimension."""
        return self.W_x.shape[2]

    @property
    def heads(self) -> int:
        return self.W_x.shape[0]

    @property
    def head_dim(self) -> int:
        return self.W_x.shape[1]

    @property
    def groups(self) -> int:
        return self.W_B.shape[0]

    @property
    def state(self) -> int:
        """N, the state size of a group."""
        return self.W_B.shape[1]

    def group_of(self, head: int) -> int:
        """The group whose B and C head ``head`` reads: head // (H/G)."""
        return head // (self.heads // self.groups)

    @property
    def io_matrices(self) -> torch.Tensor:
        """M_g = W_C^{(g)ᵀ} W_B^{(g)}: (G, d, d), rank ≤ N each."""
        return self.W_C.transpose(1, 2) @ self.W_B

    @property
    def head_matrices(self) -> torch.Tensor:
        """V_k = W_out^{(k)} W_x^{(k)}: (H, d, d), rank ≤ P each."""
        return torch.einsum("dkp,kpe->kde", self.W_out, self.W_x)

    def to(self, dtype=None, device=None) -> SSDSystem:
        return SSDSystem(*(getattr(self, k).to(dtype=dtype, device=device) for k in FIELDS))

    def flipped_output(self) -> SSDSystem:
        """The same layer with W_out negated: every V_k changes sign, every M_g stays."""
        return SSDSystem(self.W_x, self.W_B, self.W_C, self.W_dt, self.b_dt, self.a, -self.W_out)

    # ----- the flow, as the integrator calls it (tokendyn.dynamics.integrate.FlowSystem) -----
    def vector_field(self, h: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """dh/dt by one SSD scan, :func:`ssd_vector_field`. h: (batch, L, d) -> (batch, L, d)."""
        return ssd_vector_field(self, h, backend)

    def vector_field_naive(self, h: torch.Tensor) -> torch.Tensor:
        """dh/dt by the explicit double sum, :func:`ssd_vector_field_naive`."""
        return ssd_vector_field_naive(self, h)


def aligned(system: SSDSystem, h: torch.Tensor) -> SSDSystem:
    """Check h: (batch, L, d) and cast the parameters to its dtype and device."""
    if not isinstance(h, torch.Tensor) or h.dim() != 3 or h.shape[-1] != system.dim:
        got = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
        raise DataError(f"tokens must have shape (batch, L, d={system.dim}), got {got}.")
    if system.W_x.dtype != h.dtype or system.W_x.device != h.device:
        return system.to(dtype=h.dtype, device=h.device)
    return system


def step_sizes(system: SSDSystem, h: torch.Tensor) -> torch.Tensor:
    """dt_{l,k} = softplus(W_dt^{(k)} h_l + b_dt^{(k)}): h (batch, L, d) -> (batch, L, H)."""
    p = aligned(system, h)
    return F.softplus(h @ p.W_dt.T + p.b_dt)


def ssd_vector_field(system: SSDSystem, h: torch.Tensor, backend: str = "auto",
                     chunk_size: int | None = None) -> torch.Tensor:
    """dh/dt by one SSD scan and out_proj. h: (batch, L, d) -> (batch, L, d), in h's dtype.

    backend, chunk_size: passed to :func:`tokendyn.ops.ssd_scan` (``reference`` or ``chunked``).
    """
    p = aligned(system, h)
    b, L, d = h.shape
    H, P, G, N = p.heads, p.head_dim, p.groups, p.state
    # the projections as plain matmuls on (batch, L, d), as in_proj does
    x = (h @ p.W_x.reshape(H * P, d).T).reshape(b, L, H, P)
    B = (h @ p.W_B.reshape(G * N, d).T).reshape(b, L, G, N)
    C = (h @ p.W_C.reshape(G * N, d).T).reshape(b, L, G, N)
    dt = F.softplus(h @ p.W_dt.T + p.b_dt)                            # (b, L, H)
    kwargs = {} if chunk_size is None else {"chunk_size": chunk_size}
    y = ssd_scan(x, dt, -p.a, B, C, backend=backend, **kwargs)          # (b, L, H, P)
    return y.reshape(b, L, H * P) @ p.W_out.reshape(d, H * P).T


def ssd_vector_field_naive(system: SSDSystem, h: torch.Tensor) -> torch.Tensor:
    """dh/dt by the explicit double sum over heads k and positions j ≤ l (test oracle).

    h: (batch, L, d) -> (batch, L, d). Forms the d×d matrices M_g and V_k and the (batch, H, L, L)
    weights, so memory is O(batch·H·L²): for short sequences only.
    """
    p = aligned(system, h)
    L = h.shape[1]
    M, V = p.io_matrices, p.head_matrices                              # (G, d, d), (H, d, d)
    groups = torch.tensor([p.group_of(k) for k in range(p.heads)], device=h.device)
    dt = F.softplus(h @ p.W_dt.T + p.b_dt)                            # (b, L, H)
    cum = dt.cumsum(1)
    pos = torch.arange(L, device=h.device)
    # [l, j]: j ≤ l (a comparison, not tril: tril of a small bool matrix is slow on a busy CPU)
    causal = pos[None, :] <= pos[:, None]
    gap = (cum[:, :, None, :] - cum[:, None, :, :])                   # Σ_{i=j+1..l} dt_i: (b, l, j, H)
    gap = torch.where(causal[None, :, :, None], gap, torch.zeros((), dtype=h.dtype, device=h.device))
    decay = torch.exp(-p.a * gap) * causal[None, :, :, None]          # (b, l, j, H)
    Mh = torch.einsum("gde,bje->bgdj", M, h)                            # M_g h_j: (b, G, d, j)
    quad = (h[:, None] @ Mh)[:, groups]                                # h_lᵀ M_g(k) h_j: (b, H, l, j)
    coef = quad * decay.permute(0, 3, 1, 2) * dt.permute(0, 2, 1)[:, :, None, :]
    Vh = torch.einsum("kde,bje->bkjd", V, h)                           # V_k h_j: (b, H, j, d)
    return (coef @ Vh).sum(1)                                          # Σ_k Σ_j: (b, l, d)
