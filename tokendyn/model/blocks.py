"""Norms, the residual block, the layer stack ("backbone") and the model-wide init.

The block has mamba_ssm's Add -> Norm -> Mixer order: it takes the previous mixer
output and the residual stream, adds them, normalises, and runs its mixer:
    residual = hidden + residual;  hidden = mixer(norm(residual))
which is the pre-norm residual network  r_{i+1} = r_i + mixer_i(norm_i(r_i)).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..ops import check_backend_name, compute_dtype
from ..ops.step import add_rms_norm
from .checkpoint import save_model
from .contract import Mixer
from .families import build_mixer
from .internals import MambaOutput


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) · weight over the last dim, computed in float32
    (float64 for float64 input). x: (..., d) -> (..., d) in x's dtype."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = compute_dtype(x.dtype)
        # F.rms_norm is one fused kernel on CUDA (the written-out formula is four, forward
        # and backward); tests compare it with the formula in float64
        return F.rms_norm(x.to(acc), (x.shape[-1],), self.weight.to(acc), self.eps).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(d: int, rms_norm: bool, eps: float) -> nn.Module:
    """RMSNorm (``rms_norm=True``) or LayerNorm with weight and bias."""
    return RMSNorm(d, eps=eps) if rms_norm else nn.LayerNorm(d, eps=eps)


def _promote_residual(residual: torch.Tensor) -> torch.Tensor:
    """Keep the residual stream in at least float32 (float64 stays float64)."""
    return residual if residual.dtype == torch.float64 else residual.to(torch.float32)


class Block(nn.Module):
    """One residual layer: ``norm`` then ``mixer`` (any :class:`~tokendyn.model.contract.Mixer`).

    ``reverse``: the mixer sees the sequence back to front (its output is flipped back), for
    bidirectional classifiers; the recurrent :meth:`step` has no reverse.
    """

    def __init__(self, mixer: Mixer, norm: nn.Module, residual_in_fp32: bool = True,
                 reverse: bool = False):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.reverse = reverse
        self.norm = norm
        self.mixer = mixer

    def _add_norm(self, hidden, residual):
        residual = hidden if residual is None else hidden + residual
        normed = self.norm(residual.to(self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = _promote_residual(residual)
        return normed, residual

    def forward(self, hidden_states, residual=None, return_internals=False, return_state=False):
        """hidden_states, residual: (batch, L, d_model) (residual None for the first layer).

        Returns (mixer output, residual stream entering this layer, MixerRun).
        """
        if self._fuses_norm(hidden_states, residual, return_internals or return_state):
            # the add (where there is a stream already), the norm and in_proj as one node: the
            # normalised copy is recomputed in the backward instead of kept, and the add, the
            # norm and the casts are one pass each way over the stream (ops/norm_linear.py)
            if residual is not None:
                residual = residual.to(self.norm.weight.dtype)
            run = self.mixer.run(hidden_states, norm=self.norm, residual=residual)
            return run.out, run.residual, run
        normed, residual = self._add_norm(hidden_states, residual)
        if self.reverse:
            normed = normed.flip(1)
        run = self.mixer.run(normed, return_internals=return_internals, return_state=return_state)
        return (run.out.flip(1) if self.reverse else run.out), residual, run

    def _fuses_norm(self, hidden_states, residual, keeps_more: bool) -> bool:
        """The fused norm + in_proj applies: RMSNorm whose weight has the dtype the residual
        stream is kept in (float32 or float64), a forward mixer that takes the stream, and
        nothing asked beyond the output."""
        if keeps_more or self.reverse or not isinstance(self.norm, RMSNorm) or not self.mixer.takes_residual():
            return False
        dtype = hidden_states.dtype if residual is None else torch.promote_types(hidden_states.dtype, residual.dtype)
        if self.residual_in_fp32:
            dtype = dtype if dtype == torch.float64 else torch.float32
        return dtype == self.norm.weight.dtype and dtype in (torch.float32, torch.float64)

    def step(self, hidden_states, residual, *state):
        """One token: hidden_states, residual (batch, d_model), the mixer's state tuple. Returns
        (out, residual, *new state); the given state is not modified."""
        state = tuple(t.clone() for t in state)
        out, residual = self.step_(hidden_states, residual, *state)
        return (out, residual, *state)

    def step_(self, hidden_states, residual, *state):
        """One token, updating the mixer's state tensors (Mamba-1: conv (batch, D, d_conv), ssm
        (batch, D, N)) in place: hidden_states, residual (batch, d_model). Returns (out, residual)."""
        if self.reverse:
            raise ConfigError("a layer that scans in reverse has no one-token step; run the full sequence.")
        if self.residual_in_fp32 and isinstance(self.norm, RMSNorm):
            # the same Add -> Norm in one kernel where the mixer's step is fused
            normed, residual = add_rms_norm(hidden_states, residual, self.norm.weight, self.norm.eps,
                                            fused=self.mixer.fuses_kernels(hidden_states))
        else:
            normed, residual = self._add_norm(hidden_states, residual)
        return self.mixer.step_(normed, *state), residual


class MambaBackbone(nn.Module):
    """``embedding`` -> n_layer :class:`Block` -> ``norm_f`` (mamba_ssm's ``MixerModel``).

    Each block's mixer comes from :func:`~tokendyn.model.families.build_mixer`: the
    family ``config.layer`` with the variants the config selects.

    ``embedding`` maps the model's inputs to (batch, L, d_model): an ``nn.Embedding``
    for token ids, an ``nn.Linear`` for continuous vectors.
    """

    def __init__(self, config, embedding: nn.Module):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.embedding = embedding
        self.layers = nn.ModuleList([
            Block(build_mixer(config, layer_idx=i),
                  make_norm(config.d_model, config.rms_norm, config.norm_epsilon),
                  residual_in_fp32=config.residual_in_fp32)
            for i in range(config.n_layer)
        ])
        self.norm_f = make_norm(config.d_model, config.rms_norm, config.norm_epsilon)

    def set_scan_backend(self, backend: str) -> None:
        """Route every mixer's scan through ``backend`` (a ``tokendyn.ops`` backend name)."""
        check_backend_name(backend)
        for layer in self.layers:
            layer.mixer.scan_backend = backend

    def _final(self, hidden, residual):
        residual = hidden + residual
        return self.norm_f(residual.to(self.norm_f.weight.dtype))

    def forward(self, inputs, output_internals: bool = False, cache=None):
        """inputs: what ``embedding`` takes, giving (batch, L, d_model).

        Returns the final-normalised hidden states (batch, L, d_model), or with
        ``output_internals`` a :class:`MambaOutput` whose ``logits`` field holds them.
        With a ``cache`` (an :class:`~tokendyn.model.InferenceCache`): at offset 0 the
        whole sequence runs in parallel and the cache receives each layer's final
        state; later calls run token by token through :meth:`step`.
        """
        if cache is not None and cache.seqlen_offset > 0:
            if output_internals:
                raise ConfigError("output_internals is not available while decoding from a filled cache; "
                                  "run the full sequence without a cache instead.")
            outs = [self.step(inputs[:, t], cache) for t in range(inputs.shape[1])]
            return torch.stack(outs, dim=1)
        hidden = self.embedding(inputs)
        record = MambaOutput(hidden_states=[hidden], internals=[]) if output_internals else None
        residual = None
        keep_state = cache is not None
        for i, layer in enumerate(self.layers):
            hidden, residual, run = layer(hidden, residual, return_internals=output_internals,
                                          return_state=keep_state)
            if keep_state:
                cache.states[i] = run.state
            if record is not None:
                record.hidden_states.append(hidden + residual)
                record.internals.append(run.internals)
        if keep_state:
            cache.seqlen_offset += inputs.shape[1]
        out = self._final(hidden, residual)
        if record is not None:
            record.last_hidden_state = out
            return record
        return out

    def step(self, inputs_t, cache, in_place: bool = False):
        """One position for every sequence: inputs_t gives (batch, d_model) after
        ``embedding``. Advances ``cache`` and returns the final-normalised (batch, d_model).

        By default each layer's state is replaced by a new tensor (tensors taken from the cache
        before keep their values); ``in_place=True`` writes into the cache's own tensors, so
        their storage stays the same from step to step (decoding loops, CUDA graphs).
        """
        hidden = self.embedding(inputs_t)
        residual = None
        for i, layer in enumerate(self.layers):
            if not in_place:
                cache.states[i] = tuple(t.clone() for t in cache.states[i])
            hidden, residual = layer.step_(hidden, residual, *cache.states[i])
        cache.seqlen_offset += 1
        if isinstance(self.norm_f, RMSNorm):   # _final's Add -> Norm, fused with the layers' step
            return add_rms_norm(hidden, residual, self.norm_f.weight, self.norm_f.eps,
                                fused=self.layers[-1].mixer.fuses_kernels(hidden))[0]
        return self._final(hidden, residual)


def init_weights(module: nn.Module, n_layer: int, initializer_range: float = 0.02,
                 rescale_prenorm_residual: bool = True) -> None:
    """mamba_ssm's ``_init_weights`` with one residual per layer; apply with ``model.apply``.

    Linear biases -> 0 (except those marked ``_no_reinit``, e.g. Mamba-1's dt_proj bias);
    embeddings ~ N(0, 0.02²); then each block's mixer does its own part
    (``mixer.init_weights_(n_layer)``: Mamba-1 re-draws out_proj.weight with PyTorch's Linear
    init and divides it by sqrt(n_layer), so the residual stream's variance does not grow with
    depth). ``model.apply`` visits a block after its mixer's submodules.
    """
    if isinstance(module, nn.Linear):
        if module.bias is not None and not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=initializer_range)
    if rescale_prenorm_residual and isinstance(module, Block):
        module.mixer.init_weights_(n_layer)


def apply_init(model: nn.Module, n_layer: int) -> None:
    """Run :func:`init_weights` over every submodule of ``model``."""
    model.apply(partial(init_weights, n_layer=n_layer))


class BackboneModel(nn.Module):
    """What every model built on a :class:`MambaBackbone` shares: switching the
    scan backend, counting parameters, saving in tokendyn's layout."""

    def set_scan_backend(self, backend: str) -> None:
        """Route every mixer's scan through ``backend`` (a ``tokendyn.ops`` backend name)."""
        self.backbone.set_scan_backend(backend)
        self.config.scan_backend = backend

    def num_parameters(self) -> int:
        """Distinct parameters (a tied head counts once)."""
        return sum(p.numel() for p in self.parameters())

    def save(self, path) -> None:
        """Write ``path``/config.json and ``path``/model.safetensors (tokendyn layout)."""
        save_model(self, path)
