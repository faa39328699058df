"""The contract between a backbone and its mixers, and between the registry and a family's settings.

Everything outside a family's own module — the residual block, the layer stack, generation, CUDA
graphs, checkpoints and exports, the analysis and the regime monitor — talks to a mixer only
through :class:`Mixer` below, as mamba_ssm's ``Block`` knows only ``mixer(h, inference_params)``
and ``allocate_inference_cache``. A family (docs/models.md, "Families and variants") implements
it, usually by subclassing :class:`MixerBase`, which supplies the parts with an obvious default.

Shapes (the symbols of THEORY.md section 7): batch b, sequence length L, model width d_model,
inner width D (the channels the scan runs over), state size N.

A family's settings (a dataclass, :class:`FamilySettings`) and a variant's settings
(:class:`VariantSettings`) are the other half of the contract: the registry
(:mod:`tokendyn.model.families`) builds them from a config's options, and the config calls
their checks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn as nn

from ..errors import ConfigError
from .internals import MixerInternals

__all__ = ["Mixer", "MixerBase", "MixerRun", "IOParameters", "FamilySettings", "VariantSettings",
           "MixerInternals"]


@dataclass
class MixerRun:
    """What :meth:`Mixer.run` returns.

    out: (b, L, d_model), the mixer's contribution to the residual stream;
    internals: the scan's inputs (:class:`~tokendyn.model.internals.MixerInternals`) when asked for, else None;
    state: the recurrent state after the last token (the tuple :meth:`Mixer.allocate_state`
    makes, ready for :meth:`Mixer.step_`) when asked for, else None;
    residual: with ``norm=``, the residual stream the norm read (with ``residual=``, the sum the
    mixer formed), else None.
    """

    out: torch.Tensor
    internals: MixerInternals | None = None
    state: tuple[torch.Tensor, ...] | None = None
    residual: torch.Tensor | None = None


@dataclass(eq=False)
class IOParameters(Mapping):
    """One layer's parameters in THEORY.md's symbols, whatever the family (glossary, section 7).

    Fields (D = inner width, N = state size):
        S_B: (N, D)      input projection, B_l = S_B x_l
        S_C: (N, D)      output projection, C_l = S_C x_l
        S_Delta: (D, D)  step-size projection, Δ_l = softplus(S_Δ x_l + b_Δ)
        b_Delta: (D,)    step-size bias
        A: (D, N)        the state matrix's diagonal per channel (negative)
        D: (D,) or None  the skip term y_l += D ⊙ x_l, where the family has one
        extra: further family-specific tensors, by name (none for Mamba-1)

    ``form`` names the layout of the fields, and so the token flow they define (the analysis picks
    the dynamics system, the spectrum and the hidden attention by form, never by family):

    - ``"s6"`` (Mamba-1, and any family with one Δ per channel): the shapes above; the tokens are
      the scan input x (D channels), the flow is THEORY.md section 2's.
    - ``"ssd"`` (Mamba-2, docs/THEORY.md section 4a; H heads of P channels, G groups of N, d =
      d_model): S_B, S_C: (G, N, d), the B and C rows of in_proj per group (W_B, W_C);
      S_Delta: (H, d), the dt rows (W_dt); b_Delta: (H,); A: (H,), one decay per head (−a);
      D: (H,); extra ``W_x``: (H, P, d), the x rows of in_proj per head, and ``W_out``: (d, H, P),
      out_proj. The tokens are the mixer's input h (d channels, the residual stream's width),
      the flow is section 4a's.

    A family with yet another layout adds a form (and the analysis its handlers) rather than a
    case for itself. It reads like a dict too: ``params["S_B"]``, ``params.keys()`` (the fields that are
    set, then ``extra``'s names).
    """

    S_B: torch.Tensor
    S_C: torch.Tensor
    S_Delta: torch.Tensor
    b_Delta: torch.Tensor
    A: torch.Tensor
    D: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    form: str = "s6"

    THEORY_KEYS = ("S_B", "S_C", "S_Delta", "b_Delta", "A")
    FORMS = ("s6", "ssd")

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self.extra:
            return self.extra[key]
        if key in self._field_keys():
            return getattr(self, key)
        raise KeyError(key)

    def _field_keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self) if f.name not in ("extra", "form")
                     and getattr(self, f.name) is not None)

    def __iter__(self) -> Iterator[str]:
        return iter((*self._field_keys(), *self.extra))

    def __len__(self) -> int:
        return len(self._field_keys()) + len(self.extra)

    def to(self, device) -> IOParameters:
        """The same parameters on ``device``."""
        return replace(self, **{k: getattr(self, k).to(device) for k in self._field_keys()},
                       extra={k: v.to(device) for k, v in self.extra.items()})

    def detach(self) -> IOParameters:
        """The same parameters, detached from the autograd graph."""
        return replace(self, **{k: getattr(self, k).detach() for k in self._field_keys()},
                       extra={k: v.detach() for k, v in self.extra.items()})

    @property
    def sizes(self) -> tuple[int, int]:
        """(N, D) of the layer's scan: the rows of B and C and the channels the scan runs over
        (the shapes of its :class:`MixerInternals`); for ``ssd``, (G·N, H·P)."""
        if self.form == "ssd":
            g, n, _ = self.S_B.shape
            h, p, _ = self.extra["W_x"].shape
            return int(g * n), int(h * p)
        n, d = self.S_B.shape
        return int(n), int(d)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape each field must have, from S_B's (N, D) (``ssd``: S_B's (G, N, d) and W_x's
        (H, P, d))."""
        if self.form == "ssd":
            g, n, d = self.S_B.shape
            h, p, _ = self.extra["W_x"].shape
            return {"S_B": (g, n, d), "S_C": (g, n, d), "S_Delta": (h, d), "b_Delta": (h,), "A": (h,), "D": (h,),
                    "W_x": (h, p, d), "W_out": (d, h, p)}
        n, d = self.sizes
        return {"S_B": (n, d), "S_C": (n, d), "S_Delta": (d, d), "b_Delta": (d,), "A": (d, n), "D": (d,)}


@runtime_checkable
class Mixer(Protocol):
    """What a backbone needs of a mixer (an ``nn.Module``). Built as ``cls(config, layer_idx=i)``
    by :func:`tokendyn.model.families.build_mixer`, from the model's config
    (:class:`~tokendyn.model.MambaConfig` or :class:`~tokendyn.model.ClassifierConfig`: ``d_model``,
    ``mixer`` — the family's settings —, ``variants``, ``scan_backend``).

    Attributes:
        d_model: the width of the residual stream it reads and writes.
        layer_idx: its layer (None for a mixer built on its own).
        scan_backend: the ``tokendyn.ops`` backend name its scans use; the model sets it for every
            layer (``set_scan_backend``), a family without scans ignores it.
    """

    d_model: int
    layer_idx: int | None
    scan_backend: str

    def run(self, hidden_states: torch.Tensor, return_internals: bool = False, return_state: bool = False,
            norm: nn.Module | None = None, residual: torch.Tensor | None = None) -> MixerRun:
        """The forward over a whole sequence.

        hidden_states: (b, L, d_model), the block's normalised input — or, with ``norm`` (only
        where :meth:`takes_residual` is true), the residual stream before the block's RMSNorm
        ``norm`` (weight (d_model,), eps; float32 or float64), which the mixer applies itself, fused
        with its input projection. With ``norm`` and ``residual`` (the stream so far, in the norm's
        dtype), hidden_states is the previous block's output and the stream is their sum, which
        the mixer forms itself; :attr:`MixerRun.residual` returns the stream either way.
        ``return_internals``: fill :attr:`MixerRun.internals` (the scan inputs x, Δ, B, C, z as
        the scan saw them). ``return_state``: fill :attr:`MixerRun.state` with the recurrent state
        after the last token. Never both asked with ``norm``.
        """
        ...

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(b, L, d_model) -> (b, L, d_model): ``run(hidden_states).out``."""
        ...

    def takes_residual(self) -> bool:
        """Whether :meth:`run` accepts ``norm=`` and ``residual=`` (the block's Add -> RMSNorm
        fused into the mixer's input projection, so the normalised copy is recomputed in the
        backward, not kept)."""
        ...

    def fuses_kernels(self, x: torch.Tensor) -> bool:
        """Whether, for tensors like ``x`` (device, dtype), the one-token step runs in fused
        kernels; the block then fuses its Add -> RMSNorm step as well."""
        ...

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> tuple[torch.Tensor, ...]:
        """A zero recurrent state for ``batch_size`` sequences: a tuple of tensors, each with the
        batch first (Mamba-1: conv (b, D, d_conv) in the weights' dtype, ssm (b, D, N) float32).
        ``device``, ``dtype`` default to the mixer's; :meth:`run` with ``return_state`` and
        :meth:`step_` use the same tuple."""
        ...

    def step(self, hidden_states: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One token: hidden_states (b, d_model) -> (out (b, d_model), *new state); the given
        state is left alone."""
        ...

    def step_(self, hidden_states: torch.Tensor, *state: torch.Tensor) -> torch.Tensor:
        """One token, updating ``state`` in its own storage (decoding loops, CUDA graphs):
        hidden_states (b, d_model) -> out (b, d_model). Running :meth:`run` over L tokens equals
        L steps from :meth:`allocate_state`. A mixer that needs the whole sequence (token
        reordering) raises :class:`~tokendyn.errors.ConfigError`."""
        ...

    def io_parameters(self, detach: bool = True) -> IOParameters:
        """The layer's S_B, S_C, S_Δ, b_Δ, A (and D) in THEORY.md's symbols (:class:`IOParameters`);
        with ``detach=False`` they stay in the autograd graph (losses on them)."""
        ...

    def plain_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters of the family's plain mixer (no variant) that computes this mixer's
        function, detached, by state_dict name: what the exporters write. A variant that no plain
        mixer can compute raises :class:`~tokendyn.errors.CheckpointError`."""
        ...

    def init_weights_(self, n_layer: int) -> None:
        """The model-wide initialisation's part for this mixer, called after the generic one has
        zeroed the Linear biases (mamba_ssm's ``_init_weights``): Mamba-1 re-draws ``out_proj``
        and divides it by √n_layer, so the residual stream's variance does not grow with depth."""
        ...


def family_settings(config, settings_type: type, mixer: str, layer: str):
    """``config.mixer`` when it is a ``settings_type`` (the family's settings), checked against the
    whole config; otherwise a :class:`~tokendyn.errors.ConfigError` naming the layer the mixer needs."""
    s = config.mixer
    if not isinstance(s, settings_type):
        raise ConfigError(f"{mixer} needs a config of layer {layer!r}, got layer {getattr(config, 'layer', None)!r}.")
    s.check(config)
    return s


class MixerBase(nn.Module):
    """Defaults for the parts of :class:`Mixer` that most families share: ``forward`` through
    ``run``, ``step`` through ``step_`` on copies of the state, no residual fusion, no fused step,
    the whole state dict as the plain one, and no extra initialisation. A family still writes
    ``run``, ``allocate_state``, ``step_`` and ``io_parameters``."""

    d_model: int
    layer_idx: int | None = None
    scan_backend: str = "auto"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(b, L, d_model) -> (b, L, d_model)."""
        return self.run(hidden_states).out

    def run(self, hidden_states, return_internals=False, return_state=False, norm=None, residual=None) -> MixerRun:
        raise NotImplementedError

    def takes_residual(self) -> bool:
        return False

    def fuses_kernels(self, x: torch.Tensor) -> bool:
        return False

    def step(self, hidden_states: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """:meth:`step_` on copies of ``state``: (out, *new state)."""
        state = tuple(s.clone() for s in state)
        return (self.step_(hidden_states, *state), *state)

    def step_(self, hidden_states: torch.Tensor, *state: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def io_parameters(self, detach: bool = True) -> IOParameters:
        raise NotImplementedError

    def plain_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.state_dict().items()}

    def init_weights_(self, n_layer: int) -> None:
        return None


class FamilySettings(Protocol):
    """A family's settings: a dataclass (frozen: configs may share it) whose ``__post_init__``
    checks the fields on their own, raising :class:`~tokendyn.errors.ConfigError` with one
    sentence. Its field names are the family's option names (``--mixer-option NAME=VALUE``,
    the flat keys of older config.json files); another family may use the same name, but none of
    the family's own variants may."""

    def check(self, config: Any) -> None:
        """Checks that need the rest of the model's config (``d_model``, ``n_layer``)."""
        ...

    def sizes(self, d_model: int) -> dict[str, int]:
        """Derived sizes for a model of width ``d_model``; at least ``d_inner`` (D) and ``d_state``
        (N), the sizes the analysis speaks of. The config reads them as attributes
        (``config.d_inner``)."""
        ...


class VariantSettings(Protocol):
    """A variant's settings: a frozen dataclass with the same rules as :class:`FamilySettings`
    (whose defaults mean "off")."""

    def check(self, config: Any) -> None:
        """Checks that need the rest of the model's config (the family's settings, n_layer)."""
        ...

    def applies(self, layer_idx: int | None) -> bool:
        """Whether the variant modifies the mixer of layer ``layer_idx`` (None: a mixer built
        on its own)."""
        ...
