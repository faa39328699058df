"""Token generation through the recurrent state (:class:`~tokendyn.model.cache.InferenceCache`)."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .cache import InferenceCache
from .cuda_graph import graph_decoder

__all__ = ["InferenceCache", "generate", "sample_next"]


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row. logits: (batch, V) -> (batch,) int64.

    temperature 0 is greedy (argmax); otherwise sample from softmax(logits / temperature),
    restricted to the ``top_k`` largest logits when given.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, generator: torch.Generator | None = None,
             vocab_size: int | None = None, cuda_graph: bool | None = None) -> torch.Tensor:
    """Continue ``input_ids`` (batch, L0) by ``max_new_tokens`` tokens with a MambaLM.

    The prompt runs once in parallel (filling an :class:`InferenceCache`), then each new
    token costs one recurrent step, O(1) in the length so far. Sampling: greedy for
    ``temperature=0``, else softmax sampling with optional ``top_k``, drawn from
    ``generator``. Padding rows of the vocabulary are never chosen: only the first
    ``vocab_size`` logits (default ``model.config.vocab_size``) compete.

    cuda_graph: replay each step from a captured CUDA graph (:mod:`tokendyn.model.cuda_graph`;
    the same kernels, so the same tokens, at a fraction of the launch cost); None uses it when
    the model is on a CUDA device, False always steps eagerly. The prompt's ids are checked once;
    the steps then run without a device sync (generated ids are in range by construction).
    Returns (batch, L0 + max_new_tokens) int64.
    """
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0, got {temperature}.")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be a positive integer, got {top_k}.")
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}.")
    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise ConfigError(f"input_ids must be (batch, length >= 1), got shape {tuple(input_ids.shape)}.")
    on_cuda = next(model.parameters()).device.type == "cuda"
    if cuda_graph and not on_cuda:
        raise ConfigError("cuda_graph=True needs the model on a CUDA device; use cuda_graph=False or None on the CPU.")
    use_graph = on_cuda if cuda_graph is None else cuda_graph
    vocab = vocab_size or model.config.vocab_size
    batch, prompt_len = input_ids.shape
    prefilled = InferenceCache.allocate(model, batch)
    logits = model(input_ids, cache=prefilled)[:, -1, :vocab]     # checks the ids; fills the cache
    if use_graph and max_new_tokens > 1:
        decoder = graph_decoder(model, batch)
        decoder.cache.copy_from(prefilled)
        step = decoder.step
    else:
        # states in freshly allocated tensors, laid out as the graph's static cache: the fused
        # kernels then see the same strides (and compile the same way) on both paths
        cache = InferenceCache.allocate(model, batch)
        cache.copy_from(prefilled)

        def step(token):
            return model.step_(token, cache)
    out = input_ids.new_empty((batch, prompt_len + max_new_tokens), dtype=torch.int64)
    out[:, :prompt_len] = input_ids
    for i in range(max_new_tokens):
        token = sample_next(logits, temperature, top_k, generator)
        out[:, prompt_len + i] = token
        if i + 1 < max_new_tokens:
            logits = step(token)[:, :vocab]
    return out
