"""Token-by-token decoding replayed from a CUDA graph.

One decoding step of a MambaLM (token ids in, logits out, every layer's state updated in
place) is a fixed sequence of small kernels whose cost on a GPU is the host launching them. A
:class:`GraphDecoder` captures that step once, in a ``torch.cuda.CUDAGraph`` over a static
:class:`~tokendyn.model.InferenceCache`, and then each step is one graph launch.

Graphs are kept per model and per batch size (and scan backends) in a registry that holds the
model weakly, so a second ``generate`` with the same batch size reuses the graph. The graph reads
the parameters' storage: values changed in place (``load_state_dict``, an optimiser step) are
seen by the next replay, while a parameter given new storage (``model.to(...)``, a replaced
``nn.Parameter``) makes the model's graphs stale; they are then dropped and captured again.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .cache import InferenceCache

# warm-up steps on a side stream before the capture (Triton compiles its kernels there)
WARMUP_STEPS = 2

# model -> (storage fingerprint, {key: GraphDecoder})
_REGISTRY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class GraphDecoder:
    """A captured decoding step for ``batch`` sequences.

    cache: the static states (each layer's mixer state tuple, e.g. Mamba-1's conv (batch, D, d_conv)
    and ssm (batch, D, N)) the graph updates in place (load a prefilled cache with
    ``cache.copy_from``); ids: (batch,) int64, the graph's input; logits: (batch,
    padded_vocab_size), its output, overwritten by every replay.
    """

    graph: torch.cuda.CUDAGraph
    cache: InferenceCache
    ids: torch.Tensor
    logits: torch.Tensor

    @property
    def batch(self) -> int:
        return self.ids.shape[0]

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Advance the static cache by one token: ids (batch,) in range -> logits (batch,
        padded_vocab_size), the graph's output buffer (read it before the next step)."""
        self.ids.copy_(ids)
        self.graph.replay()
        self.cache.seqlen_offset += 1
        return self.logits


def _fingerprint(model) -> tuple:
    """Where every parameter and buffer lives: changes when one gets new storage."""
    return tuple((t.data_ptr(), t.dtype, t.device, tuple(t.shape))
                 for t in (*model.parameters(), *model.buffers()))


def _capture(model, batch: int, device: torch.device) -> GraphDecoder:
    cache = InferenceCache.allocate(model, batch)
    ids = torch.zeros(batch, dtype=torch.int64, device=device)
    # as PyTorch's CUDA graph notes ask: warm up on a side stream, then capture
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            model.step_(ids, cache)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits = model.step_(ids, cache)
    return GraphDecoder(graph, cache, ids, logits)


@torch.no_grad()
def graph_decoder(model, batch: int) -> GraphDecoder:
    """The captured decoding step of ``model`` (a MambaLM on a CUDA device) for ``batch``
    sequences, captured on first use and reused afterwards."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise ConfigError(f"CUDA-graph decoding needs the model on a CUDA device, not {device.type}.")
    fingerprint = _fingerprint(model)
    entry = _REGISTRY.get(model)
    if entry is None or entry[0] != fingerprint:
        entry = (fingerprint, {})
        _REGISTRY[model] = entry
    key = (batch, tuple(layer.mixer.scan_backend for layer in model.backbone.layers))
    decoders = entry[1]
    if key not in decoders:
        with torch.cuda.device(device):
            decoders[key] = _capture(model, batch, device)
    return decoders[key]


def clear_graphs(model=None) -> None:
    """Drop the captured graphs of ``model`` (of every model when None), freeing their memory."""
    if model is None:
        _REGISTRY.clear()
    else:
        _REGISTRY.pop(model, None)
