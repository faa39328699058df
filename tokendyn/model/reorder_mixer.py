"""Token reordering as a mixer variant (THEORY.md section 6), of the Mamba-1 and MambaVision families.

:class:`ReorderingMixin` is composed onto a mixer family's class (the variant registry does
this when ``reorder != "none"`` and the layer is in ``reorder_layers``: :class:`ReorderSettings`). It adds
one parameter, ``importance_weight`` = k ∈ R^D, and overrides the two hooks the mixer calls
around the scan:

    arrange_tokens(x, z)  after the conv (and SiLU), before Δ, B, C are computed:
        s = kᵀ(S_Δ x + b_Δ) per token, then x (and z with ``reorder_branches="xz"``)
        put in increasing order of s, so Δ, B and C come from the reordered tokens;
    restore_order(y)      after the scan: back to the original token order (``reorder_restore``),
        or, without a restore, y stays in the order the scan saw.

Modes: ``soft`` — SoftSort's P̂ (O(L²)), restored with P̂ᵀ normalised to stochastic rows
(the exact inverse as τ → 0); ``hard`` — the exact permutation (O(L log L)), restored with
its inverse, scores trained through a straight-through gradient.

The authors' block (MambaVision) is this variant on the ``mambavision`` family with
``reorder_branches="x"`` and ``reorder_restore=False``: x sorted, z (no gate there) in the
original order, no restore, so out_proj mixes the sorted scan output with z and the result is
added to the residual stream in the original order. On Mamba-1, ``xz`` with a restore is the
project's own variant (the gate z follows its token).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import CheckpointError, ConfigError
from .families import register_variant
from .reorder import (
    DEFAULT_WINDOW,
    check_reorder_settings,
    hard_permute,
    importance_scores,
    inverse_permute,
    soft_permute,
    soft_restore,
    softsort_matrix,
)


@dataclass(frozen=True)
class ReorderSettings:
    """The variant's settings (THEORY.md section 6): reorder (``none`` | ``soft`` | ``hard``;
    ``none``: off), reorder_tau τ > 0 and reorder_power p > 0 (SoftSort's), reorder_layers (the
    layers that reorder), reorder_branches (``xz``: x and z sorted alike; ``x``: x only, as in the
    authors' block) and reorder_restore (put the scan output back in the original order before
    out_proj; the authors' block does not)."""

    reorder: str = "none"
    reorder_tau: float = 1.0
    reorder_power: float = 1.0
    reorder_layers: list[int] = field(default_factory=lambda: [0])
    reorder_branches: str = "xz"
    reorder_restore: bool = True

    def __post_init__(self):
        check_reorder_settings(self.reorder, self.reorder_tau, self.reorder_power, self.reorder_branches)
        if not isinstance(self.reorder_restore, bool):
            raise ConfigError(f"reorder_restore must be true or false, got {self.reorder_restore!r}.")
        layers = self.reorder_layers
        if not isinstance(layers, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in layers):
            raise ConfigError(f"reorder_layers must be a list of layer indices, got {layers!r}.")
        object.__setattr__(self, "reorder_layers", list(layers))
        if self.reorder != "none" and not layers:
            raise ConfigError(f"reorder={self.reorder!r} needs at least one layer in reorder_layers.")

    def applies(self, layer_idx: int | None) -> bool:
        """Whether layer ``layer_idx`` reorders its tokens."""
        return self.reorder != "none" and layer_idx in self.reorder_layers

    def check(self, config) -> None:
        """Every layer in reorder_layers exists."""
        bad = [i for i in self.reorder_layers if not 0 <= i < config.n_layer]
        if bad:
            raise ConfigError(f"reorder_layers {bad} do not exist; the model has layers 0..{config.n_layer - 1}.")


class ReorderingMixin:
    """Reorders the tokens of a Mamba mixer by a learned importance score (module docstring).

    Built from the config's :class:`ReorderSettings` (``config.variants["reorder"]``);
    ``importance_weight`` (D,) starts uniform in ±D^-1/2 (not 0:
    equal scores would make SoftSort's rows uniform and the sort an identity with no gradient).
    """

    def __init__(self, config, layer_idx: int | None = None):
        super().__init__(config, layer_idx=layer_idx)
        s = config.variants["reorder"]
        self.setup_reordering(s.reorder, s.reorder_tau, s.reorder_power, s.reorder_branches, restore=s.reorder_restore)

    def setup_reordering(self, mode: str, tau: float = 1.0, power: float = 1.0, branches: str = "xz",
                         window: int = DEFAULT_WINDOW, restore: bool = True) -> None:
        """Set the mode and add ``importance_weight`` (what ``__init__`` does from the config)."""
        check_reorder_settings(mode, tau, power, branches)
        self.reorder_mode = mode
        self.reorder_tau = float(tau)
        self.reorder_power = float(power)
        self.reorder_branches = branches
        self.reorder_restore = bool(restore)
        self.reorder_window = window
        # a list while recording (:func:`recorded_orders`): each forward appends its ordering
        self.order_record: list | None = None
        bound = 1.0 / math.sqrt(self.d_inner)
        weight = torch.empty(self.d_inner, device=self.dt_proj.bias.device)
        self.importance_weight = nn.Parameter(nn.init.uniform_(weight, -bound, bound))

    def importance(self, x: torch.Tensor) -> torch.Tensor:
        """s = kᵀ(S_Δ x + b_Δ): x (batch, D, L) after the conv -> scores (batch, L)."""
        dt, _, _ = self.selective_inputs(x)
        return importance_scores(dt, self.dt_proj.bias, self.importance_weight)

    def arrange_tokens(self, x: torch.Tensor, z: torch.Tensor, layer_ctx=None):
        """x, z: (batch, D, L) -> (sorted x, sorted or original z, what restore_order needs)."""
        s = self.importance(x)
        both = self.reorder_branches == "xz"
        if self.reorder_mode == "soft":
            P = softsort_matrix(s, self.reorder_tau, self.reorder_power)
            self._record("soft", P)
            return soft_permute(P, x), (soft_permute(P, z) if both else z), ("soft", P)
        if self.reorder_mode == "hard":
            outs, perm = hard_permute(s, *((x, z) if both else (x,)), tau=self.reorder_tau,
                                      power=self.reorder_power, window=self.reorder_window)
            self._record("hard", perm)
            return outs[0], (outs[1] if both else z), ("hard", perm)
        return x, z, None

    def _record(self, kind: str, value: torch.Tensor) -> None:
        if self.order_record is not None:
            self.order_record.append((kind, value.detach()))

    def step_(self, *args, **kwargs):
        # step() goes through step_(), so this refuses both
        raise ConfigError("a reordering layer sorts the whole sequence, so it has no one-token step.")

    def plain_state_dict(self):
        raise CheckpointError("a model with token reordering cannot be written as a plain model of its family: "
                              "no plain mixer computes the sort.")

    def restore_order(self, y: torch.Tensor, ctx):
        """y: (batch, D, L) in the scan's order -> the original token order (unchanged without
        ``reorder_restore``)."""
        if ctx is None or not self.reorder_restore:
            return y
        kind, value = ctx
        return soft_restore(value, y) if kind == "soft" else inverse_permute(y, value)


@contextmanager
def recorded_orders(model: nn.Module):
    """While open, every reordering mixer of ``model`` keeps the ordering of each forward; yields
    {layer name: [("soft", P̂ (batch, L, L)) or ("hard", perm (batch, L)), ...]}."""
    mixers = {name: m for name, m in model.named_modules() if isinstance(m, ReorderingMixin)}
    for m in mixers.values():
        m.order_record = []
    try:
        yield {name: m.order_record for name, m in mixers.items()}
    finally:
        for m in mixers.values():
            m.order_record = None


register_variant("reorder", ReorderSettings, ReorderingMixin, families=("mamba1", "mambavision"), causal=False)
