"""The Mamba-1 mixer (S6 block), parameter for parameter the same as mamba_ssm's ``Mamba``.

Per token x_l (THEORY.md section 1, D = d_inner, N = d_state, R = dt_rank):
    [x; z] = in_proj(hidden)                         x, z ∈ R^D
    x      = silu(causal depthwise conv1d(x))        (d_conv taps)
    [δ; B; C] = x_proj(x)                            δ ∈ R^R, B = S_B x, C = S_C x ∈ R^N
    Δ      = softplus(dt_proj.weight δ + dt_proj.bias)   = softplus(S_Δ x + b_Δ)
    y      = selective_scan(x, Δ, A = −exp(A_log), B, C, D) ⊙ silu(z)
    out    = out_proj(y)
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..ops import check_backend_name, compute_dtype, resolve_backend, selective_scan
from ..ops.causal_conv import causal_conv1d_silu
from ..ops.channel_products import apply_left
from ..ops.mixer_core import selective_core
from ..ops.norm_linear import add_rms_norm_linear
from ..ops.out_linear import out_linear
from ..ops.step import causal_conv1d_update, selective_state_update
from .contract import IOParameters, MixerBase, MixerRun, family_settings
from .families import register_family
from .internals import MixerInternals
from .mamba1 import INTEROP, Mamba1Settings, resolve_dt_rank

# The parameters of a plain Mamba-1 mixer, by state_dict name (mamba_ssm's): what the
# exporters write for any variant (see MambaMixer.plain_state_dict).
PLAIN_PARAMETERS = ("in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "x_proj.weight",
                    "dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight", "out_proj.bias")


def split_x_proj(t: torch.Tensor, dt_rank: int, d_state: int, dim: int) -> tuple[torch.Tensor, ...]:
    """x_proj's rows are (δ, B, C) = (dt_rank, d_state, d_state), in mamba_ssm's order: split ``t``
    (x_proj's weight with dim=0, or its output with the channel dim) into those three parts."""
    return torch.split(t, [dt_rank, d_state, d_state], dim=dim)


def channel_linear(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A linear map along the channel dim: weight (out, in), x (batch, in, L) -> (batch, out, L),
    contiguous (:func:`~tokendyn.ops.channel_products.apply_left`): the result and the gradient of
    x both keep unit stride along L, the layout the scan reads. Under autocast the weight is cast
    before the broadcast, so it is cast once, not once per batch element.
    """
    if torch.is_autocast_enabled(x.device.type):
        weight = weight.to(torch.get_autocast_dtype(x.device.type))
    return apply_left(weight, x)


def project_out(out_proj: nn.Linear, y: torch.Tensor) -> torch.Tensor:
    """y (batch, D_out_in, L) -> out_proj(y) (batch, L, d_model), straight into the stream's layout,
    and dy back in the scan's, with no transposing copy either way (ops/out_linear.py)."""
    out = out_linear(out_proj.weight, y)
    return out if out_proj.bias is None else out + out_proj.bias


def s6_internals(x, dt, delta_bias, B, C, z) -> MixerInternals:
    """The scan's inputs as :class:`MixerInternals`: x (batch, D, L), Δ = softplus(dt + bias)
    (batch, D, L) in the compute dtype, B and C (batch, N, L), z (batch, D, L) or None."""
    delta = F.softplus(dt.to(compute_dtype(dt.dtype)) + delta_bias[:, None])
    return MixerInternals(x=x, delta=delta, B=B, C=C, z=z)


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """x with softplus(x) = y, for y > 0, written to stay accurate for small y."""
    return y + torch.log(-torch.expm1(-y))


class MambaMixer(MixerBase):
    """Mamba-1 mixer; parameters in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj.

    Build it from a model config (``MambaMixer(config)``: ``config.d_model``, ``config.mixer`` a
    :class:`~tokendyn.model.mamba1.Mamba1Settings`, ``config.scan_backend``) or from keywords like
    mamba_ssm's ``Mamba(d_model, d_state=16, ...)``. Shapes: in_proj (2D, d_model), conv1d (D, 1,
    d_conv), x_proj (R + 2N, D), dt_proj (D, R) with bias (D,), A_log (D, N), D (D,),
    out_proj (d_model, D).

    Initialisation is mamba_ssm's: dt_proj.weight uniform in ±R^-1/2·dt_scale (or that
    constant), dt_proj.bias = softplus⁻¹(Δ₀) with Δ₀ log-uniform in [dt_min, dt_max]
    (floored at dt_init_floor), A_log[d, n] = log(n + 1) (S4D-real), D = 1, other
    layers PyTorch's default; the model-wide init then redraws out_proj and divides it by
    √n_layer (:meth:`init_weights_`).

    This is the family ``"mamba1"`` of :mod:`tokendyn.model.families`, and it satisfies the mixer
    contract (:class:`tokendyn.model.contract.Mixer`); models build their mixers with
    ``build_mixer(config, layer_idx)``, which mixes in the variants the config selects. A variant
    overrides only the extension points :meth:`effective_x_proj_weight`, :meth:`selective_inputs`,
    :meth:`arrange_tokens` and :meth:`restore_order` (and refuses what it cannot do:
    :meth:`step_`, :meth:`plain_state_dict`) (docs/models.md, "Families and variants").
    """

    def __init__(self, d_model, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, scan_backend: str = "auto",
                 layer_idx: int | None = None):
        super().__init__()
        if hasattr(d_model, "mixer"):  # a model config
            settings = family_settings(d_model, Mamba1Settings, "MambaMixer", "mamba1")
            d_model, scan_backend = d_model.d_model, d_model.scan_backend
        else:
            if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model < 1:
                raise ConfigError(f"d_model must be a positive integer, got {d_model!r}.")
            settings = Mamba1Settings(d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank, dt_min=dt_min,
                                      dt_max=dt_max, dt_init=dt_init, dt_scale=dt_scale, dt_init_floor=dt_init_floor,
                                      conv_bias=conv_bias, bias=bias)
            check_backend_name(scan_backend)
            settings.check(SimpleNamespace(d_model=d_model, n_layer=1))
        s = settings
        d_state, d_conv, expand = s.d_state, s.d_conv, s.expand
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = resolve_dt_rank(s.dt_rank, d_model)
        self.scan_backend = scan_backend
        self.layer_idx = layer_idx
        D, N, R = self.d_inner, d_state, self.dt_rank

        self.in_proj = nn.Linear(d_model, 2 * D, bias=s.bias)
        self.conv1d = nn.Conv1d(D, D, kernel_size=d_conv, groups=D, padding=d_conv - 1, bias=s.conv_bias)
        self.x_proj = nn.Linear(D, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, D, bias=True)
        self.A_log = nn.Parameter(torch.empty(D, N))
        self.D = nn.Parameter(torch.empty(D))
        self.out_proj = nn.Linear(D, d_model, bias=s.bias)
        # Excluded from weight decay by the training code, as in mamba_ssm.
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.reset_ssm_parameters(s.dt_min, s.dt_max, s.dt_init, s.dt_scale, s.dt_init_floor)

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min=0.001, dt_max=0.1, dt_init="random", dt_scale=1.0,
                             dt_init_floor=1e-4) -> None:
        """mamba_ssm's initialisation of dt_proj, A_log and D (see the class docstring)."""
        std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        # Δ₀ log-uniform in [dt_min, dt_max], so softplus(bias) starts in that range.
        u = torch.rand(self.d_inner, dtype=torch.float32, device=self.dt_proj.bias.device)
        dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(inverse_softplus(dt))
        # The model-wide init zeroes Linear biases; this one must survive it.
        self.dt_proj.bias._no_reinit = True
        n = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
        self.A_log.copy_(torch.log(n).expand(self.d_inner, -1))
        self.D.fill_(1.0)

    # ---- paper quantities -------------------------------------------------------------

    def effective_x_proj_weight(self) -> torch.Tensor:
        """The x_proj weight (R + 2N, D) of a plain Mamba-1 mixer computing the same function:
        rows [dt (R); S_B (N); S_C (N)].

        Here it is ``x_proj.weight`` itself; a variant that reparametrises S_B, S_C or the
        dt rows returns the matrix its parameters make (in the autograd graph). The scan
        inputs, :meth:`io_parameters` and the exporters all read it from here.
        """
        return self.x_proj.weight

    def plain_state_dict(self) -> dict[str, torch.Tensor]:
        """This mixer's parameters as a plain Mamba-1 mixer's (names :data:`PLAIN_PARAMETERS`),
        with x_proj.weight = :meth:`effective_x_proj_weight`; detached. What the exporters write.

        A variant whose function a plain Mamba-1 mixer cannot compute overrides this to
        raise :class:`~tokendyn.errors.CheckpointError`.
        """
        state = {k: v.detach() for k, v in self.state_dict().items() if k in PLAIN_PARAMETERS}
        state["x_proj.weight"] = self.effective_x_proj_weight().detach()
        return state

    def io_parameters(self, detach: bool = True) -> IOParameters:
        """The layer's parameters in THEORY.md's symbols (glossary, section 7).

        S_B (N, D), S_C (N, D), S_Delta (D, D) = dt_proj.weight @ x_proj.weight[:R],
        b_Delta (D,), A (D, N) = −exp(A_log), D (D,), all read through
        :meth:`effective_x_proj_weight` (so a variant that reparametrises x_proj is
        analysed with no special case). With ``detach=False`` they stay in the autograd
        graph (for losses on them).
        """
        W_dt, S_B, S_C = split_x_proj(self.effective_x_proj_weight(), self.dt_rank, self.d_state, dim=0)
        out = IOParameters(S_B=S_B, S_C=S_C, S_Delta=self.dt_proj.weight @ W_dt, b_Delta=self.dt_proj.bias,
                           A=-torch.exp(self.A_log), D=self.D)
        return out.detach() if detach else out

    def selective_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The input-dependent scan parameters from the tokens (THEORY.md section 1).

        x: (batch, D, L) -> dt (batch, D, L) = S_Δ x before the bias and softplus,
        B = S_B x and C = S_C x, each (batch, N, L). The full forward and :meth:`step`
        both go through here; the weights come from :meth:`effective_x_proj_weight`.
        """
        dt, B, C = split_x_proj(channel_linear(self.effective_x_proj_weight(), x), self.dt_rank, self.d_state,
                                dim=1)
        # the bias of dt_proj is added inside the scan; B and C are views with unit stride along L
        return channel_linear(self.dt_proj.weight, dt), B, C

    def arrange_tokens(self, x: torch.Tensor, z: torch.Tensor, layer_ctx: dict):
        """Reorder the tokens before the scan; the identity here.

        x, z: (batch, D, L), after the causal conv (x) and beside it (the gate z);
        layer_ctx: ``{"hidden_states": (batch, L, d_model) mixer input, "layer_idx": int | None}``.
        Returns (x, z, ctx): the tokens the scan sees and whatever :meth:`restore_order`
        needs (None here).
        """
        return x, z, None

    def restore_order(self, y: torch.Tensor, ctx) -> torch.Tensor:
        """Undo :meth:`arrange_tokens` on the scan output y (batch, D, L); the identity here."""
        return y

    # ---- full sequence ----------------------------------------------------------------

    def _plain_core(self) -> bool:
        """Whether the tokens reach the scan as in a plain Mamba-1 mixer (no reordering, the
        selective inputs from the effective x_proj weight): then the fused core may run."""
        cls = type(self)
        return (cls.arrange_tokens is MambaMixer.arrange_tokens
                and cls.restore_order is MambaMixer.restore_order
                and cls.selective_inputs is MambaMixer.selective_inputs)

    def fuses_kernels(self, x: torch.Tensor) -> bool:
        """Whether the conv (and the one-token step) of ``x`` run in the fused Triton kernels:
        wherever the scan itself runs in Triton."""
        return x.is_cuda and resolve_backend(self.scan_backend, x.device, x.dtype) == "triton"

    def takes_residual(self) -> bool:
        """Whether :meth:`run` can take the residual stream with the block's RMSNorm
        (``norm=``) and fuse the norm with in_proj: a plain core and no in_proj bias."""
        return self.in_proj.bias is None and self._plain_core()

    def _in_projection(self, hidden_states, norm, residual):
        """(xz (b, 2D, L), the residual stream or None) for :meth:`run`'s arguments: with ``norm``,
        the block's Add -> RMSNorm -> in_proj as one node (ops/norm_linear.py)."""
        stream = None
        if norm is not None:
            xz, stream = add_rms_norm_linear(hidden_states, residual, norm.weight, norm.eps, self.in_proj.weight,
                                             fused=self.fuses_kernels(hidden_states))
        else:
            xz = channel_linear(self.in_proj.weight, hidden_states.transpose(1, 2))
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias[:, None]
        return xz, stream

    def run(self, hidden_states: torch.Tensor, return_internals: bool = False,
            return_state: bool = False, norm: nn.Module | None = None,
            residual: torch.Tensor | None = None) -> MixerRun:
        """The full-sequence forward, optionally keeping the scan inputs and the final state.

        hidden_states: (batch, L, d_model). ``return_state`` gives the state (conv, ssm): the conv
        state (the last d_conv pre-conv inputs, zero-padded on the left) and the ssm state h_L,
        ready for :meth:`step`. ``norm``: the block's RMSNorm (weight, eps), where hidden_states is the
        residual stream before it (float32 or float64; only where :meth:`takes_residual`): the
        norm and in_proj then run as one node that keeps only the residual stream for the
        backward (ops/norm_linear.py). With ``norm``, ``residual``: the stream so far (float32 or
        float64), hidden_states then being the previous block's output; the node adds them too,
        and :attr:`MixerRun.residual` holds the sum.
        """
        L = hidden_states.shape[1]
        xz, stream = self._in_projection(hidden_states, norm, residual)
        x, z = xz.chunk(2, dim=1)
        conv_state = F.pad(x, (self.d_conv - L, 0)) if return_state else None  # pads or truncates
        # causal conv + SiLU; fused in Triton wherever the scan runs in Triton
        fused = self.fuses_kernels(x)
        acc = compute_dtype(self.A_log.dtype)
        A = -torch.exp(self.A_log.to(acc))
        delta_bias = self.dt_proj.bias.to(acc)
        if fused and not (return_internals or return_state) and self._plain_core():
            # one node from the conv input to y that recomputes the conv output and Δ in its
            # backward instead of keeping them (ops/mixer_core.py): less memory in training
            y = selective_core(xz, self.conv1d.weight[:, 0, :], self.conv1d.bias,
                               self.effective_x_proj_weight(), self.dt_proj.weight, A, self.D.to(acc),
                               delta_bias, self.dt_rank, self.d_state)
            ssm_state = None
        else:
            x = causal_conv1d_silu(x, self.conv1d.weight[:, 0, :], self.conv1d.bias, fused=fused)
            x, z, order = self.arrange_tokens(x, z, {"hidden_states": hidden_states, "layer_idx": self.layer_idx})
            dt, B, C = self.selective_inputs(x)
            res = selective_scan(x, dt, A, B, C, self.D.to(acc), z=z, delta_bias=delta_bias,
                                 delta_softplus=True, return_last_state=return_state,
                                 backend=self.scan_backend)
            y, ssm_state = res if return_state else (res, None)
            y = self.restore_order(y, order)
        # no cast: y has in_proj's output dtype already (bfloat16 under autocast)
        out = project_out(self.out_proj, y)
        internals = s6_internals(x, dt, delta_bias, B, C, z) if return_internals else None
        return MixerRun(out, internals, (conv_state, ssm_state) if return_state else None, stream)

    # ---- one token --------------------------------------------------------------------

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero states: conv (batch, D, d_conv) in the weights' dtype, ssm (batch, D, N) in
        the accumulation dtype (float32, or float64 for a float64 model)."""
        device = device or self.A_log.device
        dtype = dtype or self.conv1d.weight.dtype
        conv = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype)
        ssm = torch.zeros(batch_size, self.d_inner, self.d_state, device=device,
                          dtype=compute_dtype(self.A_log.dtype))
        return conv, ssm

    def step_(self, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
        """One recurrent step that updates ``conv_state`` and ``ssm_state`` in their own storage
        (what a decoding loop or a captured CUDA graph needs; :meth:`step` is the same on copies,
        returning (out, conv_state, ssm_state)). THEORY.md section 1, one token.

        hidden_states: (batch, d_model); conv_state: (batch, D, d_conv) in the weights' dtype;
        ssm_state: (batch, D, N) float32 (float64 for a float64 model). Returns out
        (batch, d_model). The conv and the state update run in the fused Triton kernels
        wherever the scan backend resolves to triton on CUDA, else in plain PyTorch; Δ, B, C
        come from :meth:`selective_inputs` like in the full forward. Nothing is cached between
        calls (A = −exp(A_log) is computed at every step), so weights may change between steps.
        """
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)         # (b, D) each, strided views
        fused = self.fuses_kernels(x)
        x = causal_conv1d_update(conv_state, x, self.conv1d.weight[:, 0, :], self.conv1d.bias, fused=fused)
        dt, B, C = (t[..., 0] for t in self.selective_inputs(x[:, :, None]))  # (b, D), (b, N), (b, N)
        # A = −exp(A_log) (D, N), computed inside the update
        y = selective_state_update(ssm_state, x, dt, self.dt_proj.bias, self.A_log, B, C, self.D, z, fused=fused,
                                   a_log=True)
        return self.out_proj(y)

    def init_weights_(self, n_layer: int) -> None:
        """mamba_ssm's depth rescaling: out_proj.weight re-drawn with PyTorch's Linear init and
        divided by sqrt(n_layer), so the residual stream's variance does not grow with depth."""
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
            self.out_proj.weight /= math.sqrt(n_layer)


register_family("mamba1", Mamba1Settings, MambaMixer, interop=INTEROP, title="Mamba-1")
