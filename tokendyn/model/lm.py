"""The Mamba-1 language model, with mamba_ssm ``MambaLMHeadModel``'s state_dict keys:

    backbone.embedding.weight
    backbone.layers.{i}.mixer.{in_proj.weight, conv1d.weight, conv1d.bias, x_proj.weight,
                               dt_proj.weight, dt_proj.bias, A_log, D, out_proj.weight}
    backbone.layers.{i}.norm.weight
    backbone.norm_f.weight
    lm_head.weight          (the embedding itself when tie_embeddings)
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import DataError
from ..resources import graph_capturing
from .blocks import BackboneModel, MambaBackbone, apply_init
from .cache import InferenceCache
from .checkpoint import register_model_kind
from .config import MambaConfig
from .internals import MambaOutput


class MambaLM(BackboneModel):
    """Embedding -> n_layer Mamba blocks -> final norm -> lm_head over padded_vocab_size.

    ``model(input_ids)`` -> logits (batch, L, padded_vocab_size);
    ``model(input_ids, output_internals=True)`` -> :class:`MambaOutput` with every
    layer's residual stream and mixer internals (docs/models.md).
    """

    kind = "lm"  # with the config, what a checkpoint records to rebuild this model

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        V = config.padded_vocab_size
        self.backbone = MambaBackbone(config, nn.Embedding(V, config.d_model))
        self.final_dropout = nn.Dropout(config.final_dropout)    # identity in eval mode
        self.lm_head = nn.Linear(config.d_model, V, bias=False)
        apply_init(self, config.n_layer)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding matrix with the head when ``config.tie_embeddings``."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def _check_ids(self, input_ids: torch.Tensor, ndim: int, values: bool = True) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
            raise DataError("input_ids must be an int64 or int32 tensor of token ids.")
        if input_ids.dim() != ndim:
            shape = "(batch, length)" if ndim == 2 else "(batch,)"
            raise DataError(f"input_ids must be {shape}, got shape {tuple(input_ids.shape)}.")
        if values and input_ids.numel() and not graph_capturing():
            # one device sync for both bounds (an out-of-range id would otherwise end in
            # an opaque device-side assert on a GPU); not while a CUDA graph is captured, where
            # a sync is an error
            lo, hi = torch.stack(torch.aminmax(input_ids)).tolist()
            if lo < 0 or hi >= self.config.padded_vocab_size:
                raise DataError(f"token ids must lie in [0, {self.config.padded_vocab_size}), got [{lo}, {hi}].")

    def forward(self, input_ids: torch.Tensor, output_internals: bool = False,
                cache: InferenceCache | None = None, check_ids: bool = True):
        """input_ids: (batch, L) int64 -> logits (batch, L, padded_vocab_size).

        output_internals: return a :class:`MambaOutput` (logits, hidden_states, internals).
        cache: an :class:`InferenceCache`; an empty one is filled from this call's
        sequence (the prompt), a filled one is advanced token by token.
        check_ids: refuse ids outside the vocabulary (a device sync); the training loop, whose
        ids come from the run's own tokenizer, leaves it off so that the host can run ahead.
        """
        self._check_ids(input_ids, 2, values=check_ids)
        res = self.backbone(input_ids, output_internals=output_internals, cache=cache)
        if isinstance(res, MambaOutput):
            res.logits = self.lm_head(self.final_dropout(res.last_hidden_state))
            return res
        return self.lm_head(self.final_dropout(res))

    def step(self, input_ids: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """One new token per sequence: input_ids (batch,) -> logits (batch, padded_vocab_size)."""
        if input_ids.dim() == 2 and input_ids.shape[1] == 1:
            input_ids = input_ids[:, 0]
        self._check_ids(input_ids, 1)
        return self.lm_head(self.backbone.step(input_ids, cache))

    def step_(self, input_ids: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """:meth:`step` writing into the cache's own state tensors, without checking the ids
        (no device sync): input_ids (batch,) must lie in [0, padded_vocab_size), as the prompt
        checked once and ids picked among the logits do. Returns logits (batch, padded_vocab_size).
        """
        return self.lm_head(self.backbone.step(input_ids, cache, in_place=True))

    def allocate_cache(self, batch_size: int) -> InferenceCache:
        """An empty :class:`InferenceCache` for ``batch_size`` sequences."""
        return InferenceCache.allocate(self, batch_size)


register_model_kind(MambaLM, MambaConfig)
