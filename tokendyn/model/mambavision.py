"""The MambaVision-style mixer family ``"mambavision"`` (THEORY.md section 6, the authors' block).

Two branches of width D = expand·d_model / 2, each with its own depthwise convolution and SiLU;
the scan runs on x alone (no gate), and its output is concatenated with z before the output
projection. Per token (D = d_inner, N = d_state, R = dt_rank):

    [x; z]    = in_proj(hidden)                              x, z ∈ R^D
    x         = silu(depthwise conv1d_x(x))                  d_conv taps, centred ("same")
    z         = silu(depthwise conv1d_z(z))
    [δ; B; C] = x_proj(x)                                    B = S_B x, C = S_C x ∈ R^N
    Δ         = softplus(dt_proj.weight δ + dt_proj.bias)    = softplus(S_Δ x + b_Δ)
    y         = selective_scan(x, Δ, A = −exp(A_log), B, C, D)      (z = None)
    out       = out_proj([y; z])                              out_proj: (d_model, 2D)

The convolutions are centred, so a token sees its neighbours on both sides: the family is not
causal (classification only; a causal language model refuses it). It has no one-token step.
The token reordering variant (``reorder``, :mod:`.reorder_mixer`) plugs into the same hooks as
Mamba-1's (``arrange_tokens`` after the convolutions, ``restore_order`` after the scan).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..ops import compute_dtype, selective_scan
from .contract import IOParameters, MixerBase, MixerRun, family_settings
from .families import register_family
from .mamba1 import S6Settings, resolve_dt_rank
from .mixer import channel_linear, inverse_softplus, project_out, s6_internals, split_x_proj


@dataclass(frozen=True)
class MambaVisionSettings(S6Settings):
    """The MambaVision mixer's settings: the fields of :class:`~tokendyn.model.mamba1.S6Settings`
    (meaning what Mamba-1's do) with the authors' defaults, d_state 8, d_conv 3 (the taps of each
    branch's centred depthwise conv) and expand 1 (the two branches together are expand·d_model
    wide, each D = expand·d_model / 2).
    """

    d_state: int = 8
    d_conv: int = 3
    expand: float = 1

    def check(self, config) -> None:
        """Each branch, expand·d_model / 2 wide, must have at least one channel."""
        if int(self.expand * config.d_model) // 2 < 1:
            raise ConfigError(f"expand·d_model must be at least 2 (two branches), got expand={self.expand!r} and "
                              f"d_model={config.d_model}.")

    def sizes(self, d_model: int) -> dict[str, int]:
        """d_inner (D, the width of each branch and of the scan), d_state (N), dt_rank_value (R)."""
        return {"d_inner": int(self.expand * d_model) // 2, "d_state": self.d_state,
                "dt_rank_value": resolve_dt_rank(self.dt_rank, d_model)}


def same_conv_silu(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """silu(depthwise conv1d(x)) with the taps centred on each token (``padding="same"``).

    x: (batch, D, L) -> (batch, D, L).
    """
    return F.silu(F.conv1d(x, conv.weight, conv.bias, padding="same", groups=x.shape[1]))


class MambaVisionMixer(MixerBase):
    """The MambaVision mixer (module docstring); parameters in_proj (2D, d_model), conv1d_x and
    conv1d_z (D, 1, d_conv) with biases (D,), x_proj (R + 2N, D), dt_proj (D, R) with bias (D,),
    A_log (D, N), D (D,), out_proj (d_model, 2D).

    Built as ``MambaVisionMixer(config, layer_idx)`` from a model config whose ``mixer`` is a
    :class:`MambaVisionSettings`. Initialisation: dt_proj, A_log and D as Mamba-1's (mamba_ssm's),
    other layers PyTorch's defaults; the model-wide init divides out_proj by √n_layer.
    Extension points for variants: :meth:`selective_inputs`, :meth:`arrange_tokens`,
    :meth:`restore_order` (as Mamba-1's).
    """

    def __init__(self, config, layer_idx: int | None = None):
        super().__init__()
        s = family_settings(config, MambaVisionSettings, "MambaVisionMixer", "mambavision")
        self.d_model = config.d_model
        self.scan_backend = config.scan_backend
        self.layer_idx = layer_idx
        sizes = s.sizes(config.d_model)
        self.d_inner, self.d_state, self.dt_rank, self.d_conv = (sizes["d_inner"], s.d_state, sizes["dt_rank_value"],
                                                                 s.d_conv)
        D, N, R = self.d_inner, self.d_state, self.dt_rank
        self.in_proj = nn.Linear(self.d_model, 2 * D, bias=s.bias)
        self.conv1d_x = nn.Conv1d(D, D, kernel_size=s.d_conv, groups=D, bias=s.conv_bias)
        self.conv1d_z = nn.Conv1d(D, D, kernel_size=s.d_conv, groups=D, bias=s.conv_bias)
        self.x_proj = nn.Linear(D, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, D, bias=True)
        self.A_log = nn.Parameter(torch.empty(D, N))
        self.D = nn.Parameter(torch.empty(D))
        self.out_proj = nn.Linear(2 * D, self.d_model, bias=s.bias)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self._reset_ssm_parameters(s)

    @torch.no_grad()
    def _reset_ssm_parameters(self, s: MambaVisionSettings) -> None:
        """dt_proj, A_log and D as mamba_ssm initialises them (docs/models.md, Mamba-1's table)."""
        std = self.dt_rank ** -0.5 * s.dt_scale
        if s.dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        u = torch.rand(self.d_inner)
        dt = torch.exp(u * (math.log(s.dt_max) - math.log(s.dt_min)) + math.log(s.dt_min)).clamp(min=s.dt_init_floor)
        self.dt_proj.bias.copy_(inverse_softplus(dt))
        self.dt_proj.bias._no_reinit = True
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand(self.d_inner, -1))
        self.D.fill_(1.0)

    # ---- paper quantities and extension points ------------------------------------------------

    def io_parameters(self, detach: bool = True) -> IOParameters:
        """S_B, S_C (N, D), S_Delta (D, D) = dt_proj.weight @ x_proj.weight[:R], b_Delta (D,),
        A (D, N) = −exp(A_log), D (D,): THEORY.md's symbols for the scan on x."""
        W_dt, S_B, S_C = split_x_proj(self.x_proj.weight, self.dt_rank, self.d_state, dim=0)
        out = IOParameters(S_B=S_B, S_C=S_C, S_Delta=self.dt_proj.weight @ W_dt, b_Delta=self.dt_proj.bias,
                           A=-torch.exp(self.A_log), D=self.D)
        return out.detach() if detach else out

    def selective_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (batch, D, L) -> dt = S_Δ x (batch, D, L, before bias and softplus), B = S_B x and
        C = S_C x (batch, N, L)."""
        dt, B, C = split_x_proj(channel_linear(self.x_proj.weight, x), self.dt_rank, self.d_state, dim=1)
        return channel_linear(self.dt_proj.weight, dt), B, C

    def arrange_tokens(self, x: torch.Tensor, z: torch.Tensor, layer_ctx: dict):
        """Reorder the tokens before Δ, B, C are computed; the identity here. x, z: (batch, D, L)
        after their convs. Returns (x, z, what :meth:`restore_order` needs)."""
        return x, z, None

    def restore_order(self, y: torch.Tensor, ctx) -> torch.Tensor:
        """Undo :meth:`arrange_tokens` on the scan output y (batch, D, L); the identity here."""
        return y

    # ---- the forward ---------------------------------------------------------------------------

    def run(self, hidden_states: torch.Tensor, return_internals: bool = False, return_state: bool = False,
            norm: nn.Module | None = None) -> MixerRun:
        """hidden_states: (batch, L, d_model) -> out (batch, L, d_model). ``return_state``: the
        scan's state after the last token, (ssm (batch, D, N),); ``norm`` is not taken."""
        if norm is not None:
            raise ConfigError("the MambaVision mixer does not take the residual stream with a norm.")
        xz = channel_linear(self.in_proj.weight, hidden_states.transpose(1, 2))          # (b, 2D, L)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias[:, None]
        x, z = xz.chunk(2, dim=1)
        x, z = same_conv_silu(x, self.conv1d_x), same_conv_silu(z, self.conv1d_z)
        x, z, order = self.arrange_tokens(x, z, {"hidden_states": hidden_states, "layer_idx": self.layer_idx})
        dt, B, C = self.selective_inputs(x)
        acc = compute_dtype(self.A_log.dtype)
        A = -torch.exp(self.A_log.to(acc))
        delta_bias = self.dt_proj.bias.to(acc)
        res = selective_scan(x, dt, A, B, C, self.D.to(acc), z=None, delta_bias=delta_bias, delta_softplus=True,
                             return_last_state=return_state, backend=self.scan_backend)
        y, ssm_state = res if return_state else (res, None)
        y = self.restore_order(y.to(z.dtype), order)
        out = project_out(self.out_proj, torch.cat([y, z], dim=1))      # (b, L, d_model)
        internals = s6_internals(x, dt, delta_bias, B, C, None) if return_internals else None
        return MixerRun(out, internals, (ssm_state,) if return_state else None)

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> tuple[torch.Tensor]:
        """(ssm (batch, D, N),) zeros in the accumulation dtype: the shape of :meth:`run`'s state."""
        return (torch.zeros(batch_size, self.d_inner, self.d_state, device=device or self.A_log.device,
                            dtype=compute_dtype(self.A_log.dtype)),)

    def step_(self, hidden_states: torch.Tensor, *state: torch.Tensor) -> torch.Tensor:
        raise ConfigError("the MambaVision mixer's convolutions look at later tokens, so it has no one-token step.")

    def init_weights_(self, n_layer: int) -> None:
        """out_proj.weight re-drawn with PyTorch's Linear init and divided by √n_layer."""
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
            self.out_proj.weight /= math.sqrt(n_layer)


register_family("mambavision", MambaVisionSettings, MambaVisionMixer, title="MambaVision", causal=False)
