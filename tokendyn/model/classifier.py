"""A Mamba-1 classifier for sequences of continuous vectors or for images cut into patches.

    backbone.embedding: TokenEmbedding (a Linear(input_dim, d_model), optionally with a
                        learned position table ``position`` (n_positions, d_model))
    backbone.layers.{i}: the same blocks as the language model (odd ones reversed when
                        ``bidirectional``)
    backbone.norm_f:     final norm
    head:                Linear(d_model, n_classes) on the pooled sequence
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..errors import DataError
from .blocks import BackboneModel, MambaBackbone, apply_init
from .checkpoint import register_model_kind
from .config import ClassifierConfig
from .internals import MambaOutput


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Non-overlapping patches in raster order (row by row, left to right).

    images: (batch, C, H, W), H and W multiples of patch_size -> (batch, (H/p)·(W/p), C·p·p),
    each token's values ordered (channel, row in patch, column in patch).
    """
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


class TokenEmbedding(nn.Linear):
    """Linear(input_dim, d_model) plus, when ``n_positions`` > 0, a learned position table.

    (batch, L, input_dim) -> (batch, L, d_model). Being a Linear, its weight and bias keep the
    names ``backbone.embedding.weight/bias`` of classifiers written without positions.
    """

    def __init__(self, input_dim: int, d_model: int, n_positions: int = 0):
        super().__init__(input_dim, d_model)
        self.position = nn.Parameter(torch.randn(n_positions, d_model) * 0.02) if n_positions else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.position is not None:
            out = out + self.position[: x.shape[1]].to(out.dtype)
        return out


class MambaClassifier(BackboneModel):
    """``model(x)`` -> logits (batch, n_classes), with x (batch, L, input_dim), or images
    (batch, C, H, W) when ``config.patch_size`` > 0.

    ``output_internals=True`` returns a :class:`MambaOutput` whose ``logits`` are the
    class logits and whose ``hidden_states``/``internals`` are as for the language model
    (the internals of a reversed layer, or of a reordering one, are in the order its scan saw).
    """

    kind = "classifier"  # with the config, what a checkpoint records to rebuild this model

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        self.backbone = MambaBackbone(config, TokenEmbedding(config.input_dim, config.d_model, config.n_positions))
        for i, layer in enumerate(self.backbone.layers):
            layer.reverse = bool(config.bidirectional and i % 2 == 1)
        self.head = nn.Linear(config.d_model, config.n_classes)
        apply_init(self, config.n_layer)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """(batch, L, d_model) -> (batch, d_model): mean over L, or the last token."""
        return hidden.mean(dim=1) if self.config.pooling == "mean" else hidden[:, -1]

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Check the input and return it as tokens (batch, L, input_dim)."""
        cfg = self.config
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise DataError("the classifier's input must be a floating-point tensor.")
        if cfg.patch_size:
            p, c = cfg.patch_size, cfg.image_channels
            if x.dim() != 4 or x.shape[1] != c or x.shape[2] % p or x.shape[3] % p or x.shape[2] < 1:
                raise DataError(f"the classifier's input must be images (batch, {c}, H, W) with H and W "
                                f"multiples of the patch size {p}, got shape {tuple(x.shape)}.")
            x = patchify(x, p)
        elif x.dim() != 3 or x.shape[-1] != cfg.input_dim or x.shape[1] < 1:
            raise DataError(f"the classifier's input must be (batch, length >= 1, {cfg.input_dim}), "
                            f"got shape {tuple(x.shape)}.")
        if cfg.n_positions and x.shape[1] > cfg.n_positions:
            raise DataError(f"the input has {x.shape[1]} tokens but the position embedding covers "
                            f"{cfg.n_positions}.")
        return x

    def example_input(self, n_tokens: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A standard-normal input of batch 1 the model takes, with about ``n_tokens`` tokens:
        (1, n, input_dim), or for a patch model a square image (1, C, s·p, s·p) with s² ≤ n
        patches (at most n_positions); on the model's device, in float32."""
        cfg = self.config
        n = max(1, min(n_tokens, cfg.n_positions) if cfg.n_positions else n_tokens)
        if cfg.patch_size:
            side = max(1, math.isqrt(n)) * cfg.patch_size
            shape = (1, cfg.image_channels, side, side)
        else:
            shape = (1, n, cfg.input_dim)
        return torch.randn(shape, generator=generator).to(next(self.parameters()).device)

    def forward(self, x: torch.Tensor, output_internals: bool = False):
        """x: (batch, L, input_dim) or images (batch, C, H, W) float -> logits (batch, n_classes)."""
        res = self.backbone(self.tokens(x), output_internals=output_internals)
        if isinstance(res, MambaOutput):
            res.logits = self.head(self.pool(res.last_hidden_state))
            return res
        return self.head(self.pool(res))


register_model_kind(MambaClassifier, ClassifierConfig)
