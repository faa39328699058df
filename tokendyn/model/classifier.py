"""A Mamba-1 classifier for sequences of continuous vectors (e.g. image patches).

    backbone.embedding: Linear(input_dim, d_model)   the input projection
    backbone.layers.{i}: the same blocks as the language model
    backbone.norm_f:     final norm
    head:                Linear(d_model, n_classes) on the pooled sequence
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import DataError
from .blocks import BackboneModel, MambaBackbone, apply_init
from .config import ClassifierConfig
from .outputs import MambaOutput


class MambaClassifier(BackboneModel):
    """``model(x)`` with x: (batch, L, input_dim) -> logits (batch, n_classes).

    ``output_internals=True`` returns a :class:`MambaOutput` whose ``logits`` are the
    class logits and whose ``hidden_states``/``internals`` are as for the language model.
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        self.backbone = MambaBackbone(config, nn.Linear(config.input_dim, config.d_model))
        self.head = nn.Linear(config.d_model, config.n_classes)
        apply_init(self, config.n_layer)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """(batch, L, d_model) -> (batch, d_model): mean over L, or the last token."""
        return hidden.mean(dim=1) if self.config.pooling == "mean" else hidden[:, -1]

    def forward(self, x: torch.Tensor, output_internals: bool = False):
        """x: (batch, L, input_dim) float -> logits (batch, n_classes)."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise DataError("the classifier's input must be a floating-point tensor (batch, length, input_dim).")
        if x.dim() != 3 or x.shape[-1] != self.config.input_dim or x.shape[1] < 1:
            raise DataError(f"the classifier's input must be (batch, length >= 1, {self.config.input_dim}), "
                            f"got shape {tuple(x.shape)}.")
        res = self.backbone(x, output_internals=output_internals)
        if isinstance(res, MambaOutput):
            res.logits = self.head(self.pool(res.last_hidden_state))
            return res
        return self.head(self.pool(res))
