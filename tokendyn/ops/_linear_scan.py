"""In-place, chunk-parallel first-order linear recurrence over the leading (time) axis.

Forward:  x[t] <- a[t] * x[t-1] + x[t]   for t = 0..L-1, with x[-1] = h0.
Reverse:  x[t] <- a[t] * x[t+1] + x[t]   for t = L-1..0, with x[L]  = h0.

a and x have shape (L, *S) (time first, so one time step is one contiguous block);
h0 has shape S. Every a[t] must lie in [0, 1] (they are exp(Δ·A) with Δ ≥ 0, A ≤ 0),
so every product of a's that appears below is ≤ 1: nothing can overflow, whatever L.

Method: split the time axis into chunks of T steps. Inside every chunk, all chunks at
once, run the recurrence from a zero state (T vectorised steps over (n_chunks, *S)) and
turn a into its within-chunk cumulative product (the decay from the chunk start,
≤ 1). The states entering each chunk then follow from a recurrence of length n_chunks
over the chunk-final values — solved by the same routine — and are added back with
that cumulative decay. Python-level steps: about T + n_chunks instead of L.
"""

from __future__ import annotations

import torch

# Below this length the plain sequential loop is as fast and has no setup.
_SEQUENTIAL_MAX = 24


def _sequential(a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor | None, reverse: bool) -> None:
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    prev = h0
    for t in steps:
        if prev is not None:
            x[t].addcmul_(a[t], prev)
        prev = x[t]


def overwrites_a(length: int, chunk: int) -> bool:
    """Whether :func:`linear_scan_` will overwrite ``a`` for this length and chunk."""
    return not (length <= max(_SEQUENTIAL_MAX, chunk) or chunk < 2)


def linear_scan_(a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor | None = None,
                 reverse: bool = False, chunk: int = 32) -> torch.Tensor:
    """Overwrite x (L, *S) with the states of the recurrence.

    a (L, *S) is overwritten with within-chunk cumulative products when the chunked
    path runs (see :func:`overwrites_a`); pass a copy if it is needed afterwards.

    h0: (*S) or None (zero). Returns x. ``chunk`` is the number of steps per chunk.
    """
    length = x.shape[0]
    if length == 0:
        return x
    if not overwrites_a(length, chunk):                       # short, or chunk 1 (no progress)
        _sequential(a, x, h0, reverse)
        return x
    n_chunks, rem = divmod(length, chunk)
    full = n_chunks * chunk
    if reverse and rem:
        # The tail is processed first in reverse time; its first state seeds the rest.
        _sequential(a[full:], x[full:], h0, True)
        h0 = x[full]
    av = a[:full].view(n_chunks, chunk, *a.shape[1:])
    xv = x[:full].view(n_chunks, chunk, *x.shape[1:])
    # Local scan inside every chunk from a zero state, and the cumulative decay.
    # unbind makes all per-step views in one call (cheaper than indexing each step).
    a_steps, x_steps = av.unbind(1), xv.unbind(1)
    if reverse:
        for t in range(chunk - 2, -1, -1):
            x_steps[t].addcmul_(a_steps[t], x_steps[t + 1])
            a_steps[t].mul_(a_steps[t + 1])
        edge = 0
    else:
        for t in range(1, chunk):
            x_steps[t].addcmul_(a_steps[t], x_steps[t - 1])
            a_steps[t].mul_(a_steps[t - 1])
        edge = chunk - 1
    # True states at each chunk's far edge: a recurrence of length n_chunks.
    edge_states = linear_scan_(a_steps[edge].clone(), x_steps[edge].clone(), h0, reverse, chunk)
    # Add the state entering each chunk from outside, times the decay since.
    if n_chunks > 1:
        inner, outer = (slice(0, -1), slice(1, None)) if reverse else (slice(1, None), slice(0, -1))
        xv[inner].addcmul_(av[inner], edge_states[outer].unsqueeze(1))
    if h0 is not None:
        bound = n_chunks - 1 if reverse else 0
        xv[bound].addcmul_(av[bound], h0)
    if not reverse and rem:
        _sequential(a[full:], x[full:], x[full - 1], False)
    return x
