"""The per-layer recurrent state of a model during decoding."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class InferenceCache:
    """Each layer's recurrent state after ``seqlen_offset`` tokens.

    states[i]: the state tuple of layer i's mixer, as its ``allocate_state`` makes it (the mixer
    contract, :mod:`tokendyn.model.contract`). Mamba-1: (conv (batch, D, d_conv) — the last d_conv
    inputs of the causal conv —, ssm (batch, D, N) — the scan state h, float32, or float64 for a
    float64 model). A cache at offset 0 is empty: the next forward runs the whole prompt in
    parallel and fills it; afterwards every forward advances it token by token.
    """

    states: list[tuple[torch.Tensor, ...]] = field(default_factory=list)
    seqlen_offset: int = 0

    @classmethod
    def allocate(cls, model, batch_size: int) -> InferenceCache:
        """Zero states for every layer of ``model`` (a MambaLM or MambaClassifier)."""
        return cls([tuple(layer.mixer.allocate_state(batch_size)) for layer in model.backbone.layers], 0)

    def tensors(self) -> list[torch.Tensor]:
        """Every state tensor, layer by layer."""
        return [t for state in self.states for t in state]

    def copy_from(self, other: InferenceCache) -> None:
        """Copy the states and offset of ``other`` into this cache's own tensors (their storage
        and layout stay as allocated)."""
        for dst, src in zip(self.tensors(), other.tensors()):
            dst.copy_(src)
        self.seqlen_offset = other.seqlen_offset

    @property
    def batch_size(self) -> int:
        return self.states[0][0].shape[0] if self.states else 0
