"""The Mamba-2 mixer (SSD block), parameter for parameter the same as mamba_ssm's ``Mamba2`` and
transformers' ``Mamba2Mixer`` (docs/THEORY.md section 4a; D = d_inner, H heads of P = head_dim
channels, G = n_groups groups of N = d_state):

    [z; xBC; dt] = in_proj(h)                       z ∈ R^D, xBC ∈ R^{D + 2GN}, dt ∈ R^H
    [x; B; C]    = silu(causal depthwise conv1d(xBC))   x ∈ R^D (H×P), B, C ∈ R^{GN} (G×N)
    Δ            = clamp(softplus(dt + dt_bias), dt_limit)     one per head
    y            = ssd_scan(x, Δ, A = −exp(A_log), B, C, D)    (tokendyn.ops.ssd_scan)
    y            = norm(y ⊙ silu(z))     gated RMSNorm over each of the G groups of D/G channels
    out          = out_proj(y)

The scan goes through :func:`tokendyn.ops.ssd_scan` (backends ``reference``, the recurrence, and
``chunked``, the block decomposition); the one-token step through :func:`tokendyn.ops.ssd_step`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..ops import compute_dtype, ssd_scan
from ..ops.causal_conv import causal_conv1d_silu
from ..ops.ssd_reference import ssd_step
from ..ops.step import causal_conv1d_update
from .contract import IOParameters, MixerBase, MixerRun, family_settings
from .families import register_family
from .internals import MixerInternals
from .mamba2 import INTEROP, Mamba2Settings
from .mixer import inverse_softplus

# mamba_ssm's A_init_range: A = −U(1, 16) per head at initialisation
A_INIT_RANGE = (1.0, 16.0)


def ssd_backend(scan_backend: str) -> str:
    """The SSD backend for the model's ``scan_backend`` (a ``selective_scan`` name): the SSD
    backend of that name (``reference``, ``chunked``, ``triton``; ``auto`` is ``chunked``)."""
    return scan_backend


def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float, groups: int,
                   norm_before_gate: bool = False) -> torch.Tensor:
    """mamba_ssm's ``RMSNormGated`` (transformers' ``MambaRMSNormGated``) with ``group_size = D/groups``.

    y, z: (..., D); weight: (D,). norm_before_gate False: t = y·silu(z), then each group of D/groups
    channels is divided by its root mean square, t / sqrt(mean(t²) + eps) · weight; True:
    rms(y)·weight·silu(z). Computed in float32 (float64 for float64 input), returned in y's dtype.
    Grouping matters: with G > 1 each group of heads is normalised on its own, as the groups' B and C
    are separate.
    """
    acc = compute_dtype(y.dtype)
    t, gate = y.to(acc), F.silu(z.to(acc))
    if not norm_before_gate:
        t = t * gate
    shape = t.shape
    g = t.reshape(*shape[:-1], groups, shape[-1] // groups)
    t = (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)).reshape(shape) * weight.to(acc)
    if norm_before_gate:
        t = t * gate
    return t.to(y.dtype)


class Mamba2Mixer(MixerBase):
    """Mamba-2 mixer; parameters in_proj (2D + 2GN + H, d_model), conv1d (D + 2GN, 1, d_conv),
    dt_bias (H,), A_log (H,), D (H,), norm.weight (D,) (with ``rmsnorm``), out_proj (d_model, D).

    Built from a model config (``Mamba2Mixer(config, layer_idx)``: ``config.d_model``,
    ``config.mixer`` a :class:`~tokendyn.model.mamba2.Mamba2Settings`, ``config.norm_epsilon`` (the
    gated norm's eps, as in transformers), ``config.scan_backend``). Initialisation is mamba_ssm's:
    dt_bias = softplus⁻¹(Δ₀) with Δ₀ log-uniform in [dt_min, dt_max] (floored), A_log = log U(1, 16),
    D = 1, norm weight 1, the rest PyTorch's default; the model-wide init then redraws out_proj
    and divides it by √n_layer (:meth:`init_weights_`). The family ``"mamba2"`` of
    :mod:`tokendyn.model.families`; satisfies :class:`tokendyn.model.contract.Mixer`.
    """

    def __init__(self, config, layer_idx: int | None = None):
        super().__init__()
        s = family_settings(config, Mamba2Settings, "Mamba2Mixer", "mamba2")
        sizes = s.sizes(config.d_model)
        self.settings = s
        self.d_model, self.layer_idx, self.scan_backend = config.d_model, layer_idx, config.scan_backend
        self.d_inner, self.d_state, self.d_conv = sizes["d_inner"], s.d_state, s.d_conv
        self.n_heads, self.head_dim, self.n_groups = sizes["n_heads"], s.head_dim, s.n_groups
        self.conv_dim, self.chunk_size = sizes["conv_dim"], s.chunk_size
        self.eps = float(config.norm_epsilon)
        D, H, GN = self.d_inner, self.n_heads, self.n_groups * self.d_state

        self.in_proj = nn.Linear(self.d_model, 2 * D + 2 * GN + H, bias=s.bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=s.d_conv, groups=self.conv_dim,
                                padding=s.d_conv - 1, bias=s.conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.A_log = nn.Parameter(torch.empty(H))
        self.D = nn.Parameter(torch.empty(H))
        if s.rmsnorm:
            self.norm = nn.Module()
            self.norm.weight = nn.Parameter(torch.ones(D))
        self.out_proj = nn.Linear(D, self.d_model, bias=s.bias)
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True       # as in mamba_ssm
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """mamba_ssm's initialisation of dt_bias, A_log and D (see the class docstring)."""
        s = self.settings
        if self.dt_bias.device.type == "meta":
            return
        u = torch.rand(self.n_heads, dtype=torch.float32, device=self.dt_bias.device)
        dt = torch.exp(u * (math.log(s.dt_max) - math.log(s.dt_min)) + math.log(s.dt_min)).clamp(min=s.dt_init_floor)
        self.dt_bias.copy_(inverse_softplus(dt))
        self.A_log.copy_(torch.empty_like(self.A_log, dtype=torch.float32).uniform_(*A_INIT_RANGE).log())
        self.D.fill_(1.0)

    # ---- pieces shared by the forward and the step ------------------------------------------

    def _split_in(self, zxbcdt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """in_proj's output (..., 2D + 2GN + H) -> z (..., D), xBC (..., D + 2GN), dt (..., H)."""
        return torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.n_heads], dim=-1)

    def _split_xbc(self, xbc: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The conv's output along ``dim`` -> x (D), B (GN), C (GN)."""
        gn = self.n_groups * self.d_state
        return torch.split(xbc, [self.d_inner, gn, gn], dim=dim)

    def _delta(self, dt: torch.Tensor) -> torch.Tensor:
        """Δ = clamp(softplus(dt + dt_bias), dt_limit) in the accumulation dtype: (..., H)."""
        acc = compute_dtype(dt.dtype)
        delta = F.softplus(dt.to(acc) + self.dt_bias.to(acc))
        low, high = self.settings.dt_limit
        if low > 0.0 or high < math.inf:
            delta = delta.clamp(min=low, max=high)
        return delta

    def _A(self, dtype: torch.dtype) -> torch.Tensor:
        """A = −exp(A_log): (H,), one decay per head."""
        return -torch.exp(self.A_log.to(compute_dtype(dtype)))

    def _finish(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The gate (inside the gated RMSNorm, or alone) and out_proj: y, z (..., D) -> (..., d_model)."""
        if self.settings.rmsnorm:
            y = gated_rms_norm(y, z, self.norm.weight, self.eps, self.n_groups, self.settings.norm_before_gate)
        else:
            y = (y.to(compute_dtype(y.dtype)) * F.silu(z.to(compute_dtype(z.dtype)))).to(y.dtype)
        return self.out_proj(y)

    # ---- full sequence ----------------------------------------------------------------------

    def run(self, hidden_states: torch.Tensor, return_internals: bool = False, return_state: bool = False,
            norm: nn.Module | None = None) -> MixerRun:
        """The forward over a sequence: hidden_states (b, L, d_model) -> out (b, L, d_model).

        ``return_state`` gives (conv_state (b, D + 2GN, d_conv), the last d_conv inputs of the conv,
        zero-padded on the left; ssm_state (b, H, P, N), the scan state after the last token).
        ``return_internals`` fills :class:`MixerInternals` in the S6 form (x, Δ per channel, B, C,
        z) plus the mixer input h. ``norm`` is refused (:meth:`takes_residual` is False).
        """
        if norm is not None:
            raise ConfigError("the Mamba-2 mixer does not fuse the block's norm; pass the normalised input.")
        b, L, _ = hidden_states.shape
        z, xbc, dt = self._split_in(self.in_proj(hidden_states))
        xbc = xbc.transpose(1, 2)                                                  # (b, D + 2GN, L)
        conv_state = F.pad(xbc, (self.d_conv - L, 0)) if return_state else None    # pads or truncates
        xbc = causal_conv1d_silu(xbc, self.conv1d.weight[:, 0, :], self.conv1d.bias)
        x, B, C = self._split_xbc(xbc, dim=1)                                      # (b, D|GN, L)
        delta = self._delta(dt)                                                    # (b, L, H)
        H, P, G, N = self.n_heads, self.head_dim, self.n_groups, self.d_state
        res = ssd_scan(x.transpose(1, 2).reshape(b, L, H, P), delta, self._A(x.dtype),
                       B.transpose(1, 2).reshape(b, L, G, N), C.transpose(1, 2).reshape(b, L, G, N),
                       D=self.D.to(compute_dtype(x.dtype)), return_final_state=return_state,
                       backend=ssd_backend(self.scan_backend), chunk_size=self.chunk_size)
        y, ssm_state = res if return_state else (res, None)
        out = self._finish(y.reshape(b, L, self.d_inner), z)
        internals = None
        if return_internals:
            internals = MixerInternals(x=x, delta=delta.repeat_interleave(P, dim=-1).transpose(1, 2), B=B, C=C,
                                       z=z.transpose(1, 2), h=hidden_states)
        return MixerRun(out, internals, (conv_state, ssm_state) if return_state else None)

    # ---- one token --------------------------------------------------------------------------

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero states: conv (b, D + 2GN, d_conv) in the weights' dtype, ssm (b, H, P, N) in the
        accumulation dtype (float32, or float64 for a float64 model)."""
        device = device or self.A_log.device
        dtype = dtype or self.conv1d.weight.dtype
        conv = torch.zeros(batch_size, self.conv_dim, self.d_conv, device=device, dtype=dtype)
        ssm = torch.zeros(batch_size, self.n_heads, self.head_dim, self.d_state, device=device,
                          dtype=compute_dtype(self.A_log.dtype))
        return conv, ssm

    def step_(self, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
        """One token, updating ``conv_state`` (b, D + 2GN, d_conv) and ``ssm_state`` (b, H, P, N) in
        their own storage: hidden_states (b, d_model) -> out (b, d_model). The same arithmetic as
        :meth:`run` for one step (the SSD recurrence, :func:`tokendyn.ops.ssd_step`)."""
        b = hidden_states.shape[0]
        z, xbc, dt = self._split_in(self.in_proj(hidden_states))
        xbc = causal_conv1d_update(conv_state, xbc, self.conv1d.weight[:, 0, :], self.conv1d.bias)
        x, B, C = self._split_xbc(xbc, dim=-1)
        H, P, G, N = self.n_heads, self.head_dim, self.n_groups, self.d_state
        y, new = ssd_step(ssm_state, x.reshape(b, H, P), self._delta(dt), self._A(x.dtype), B.reshape(b, G, N),
                          C.reshape(b, G, N), D=self.D.to(compute_dtype(x.dtype)))
        ssm_state.copy_(new)
        return self._finish(y.reshape(b, self.d_inner), z)

    # ---- the analysis' view -----------------------------------------------------------------

    def io_parameters(self, detach: bool = True) -> IOParameters:
        """The layer in docs/THEORY.md section 4a's symbols, form ``"ssd"`` (:class:`IOParameters`):
        S_B = W_B, S_C = W_C (G, N, d_model), S_Delta = W_dt (H, d_model), b_Delta = dt_bias (plus
        in_proj's dt bias, if any) (H,), A = −exp(A_log) (H,), D (H,), extra W_x (H, P, d_model) and
        W_out = out_proj.weight viewed (d_model, H, P). The idealised flow drops the conv, the gate,
        the norm, D and in_proj's other biases."""
        D, H, P, G, N, d = self.d_inner, self.n_heads, self.head_dim, self.n_groups, self.d_state, self.d_model
        W = self.in_proj.weight
        _, W_x, W_B, W_C, W_dt = torch.split(W, [D, D, G * N, G * N, H], dim=0)
        b_dt = self.dt_bias if self.in_proj.bias is None else self.dt_bias + self.in_proj.bias[-H:]
        out = IOParameters(S_B=W_B.reshape(G, N, d), S_C=W_C.reshape(G, N, d), S_Delta=W_dt, b_Delta=b_dt,
                           A=-torch.exp(self.A_log), D=self.D,
                           extra={"W_x": W_x.reshape(H, P, d), "W_out": self.out_proj.weight.reshape(d, H, P)},
                           form="ssd")
        return out.detach() if detach else out

    def init_weights_(self, n_layer: int) -> None:
        """mamba_ssm's depth rescaling (its ``_init_weights`` treats every mixer's out_proj alike):
        out_proj.weight re-drawn with PyTorch's Linear init and divided by sqrt(n_layer)."""
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
            self.out_proj.weight /= math.sqrt(n_layer)


register_family("mamba2", Mamba2Settings, Mamba2Mixer, interop=INTEROP, title="Mamba-2")
