"""What one forward pass can hand to analysis code: the residual stream and the
mixer internals of every layer (requested with ``output_internals=True``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MixerInternals:
    """The selective scan's inputs in one mixer, as the scan saw them (part of the mixer contract,
    :mod:`tokendyn.model.contract`: every family fills them in this form).

    Shapes (D = d_inner, N = d_state, L = sequence length):
        x:     (batch, D, L)  scan input u (Mamba-1: in_proj's x half after the causal conv and SiLU)
        delta: (batch, D, L)  Δ after its bias and softplus (accumulation dtype)
        B:     (batch, N, L)  B_l = S_B x_l
        C:     (batch, N, L)  C_l = S_C x_l
        z:     (batch, D, L)  gate branch (before SiLU), or None for a family without a gate
        h:     (batch, L, d_model) the mixer's input, filled by families whose token flow moves it
               (io_parameters form ``"ssd"``, Mamba-2), else None

    Mamba-2 (form ``"ssd"``, H heads of P channels, G groups of N) fills them as an S6 scan over
    D = H·P channels would see them: ``delta`` is each head's Δ repeated over its P channels, and
    B, C (batch, G·N, L) hold the groups one after another (channel d reads group g(head(d))).
    """

    x: torch.Tensor
    delta: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    z: torch.Tensor | None = None
    h: torch.Tensor | None = None


@dataclass
class MambaOutput:
    """The per-layer record of one forward pass, and what the model's head made of it.

    last_hidden_state: (batch, L, d_model), the backbone's output after the final norm.
    logits: (batch, L, padded_vocab) for :class:`MambaLM`, (batch, n_classes) for
        :class:`MambaClassifier`; None when the backbone runs on its own.
    hidden_states: n_layer + 1 tensors (batch, L, d_model): the residual stream
        entering layer 0 (embeddings or projected inputs), then after each layer i
        (residual + mixer output), before the final norm.
    internals: one :class:`MixerInternals` per layer.
    """

    last_hidden_state: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: list[torch.Tensor] = field(default_factory=list)
    internals: list[MixerInternals] = field(default_factory=list)
