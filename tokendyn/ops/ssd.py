"""``ssd_scan``: the Mamba-2 (SSD) scan's one entry point — input checks and backend dispatch.

Contract (the layout of state-spaces ``mamba_chunk_scan_combined`` and HF ``Mamba2``):
    x: (batch, length, heads, head_dim); dt: (batch, length, heads), Δ after bias and softplus;
    A: (heads,); B, C: (batch, length, n_groups, state), head h reading group
    h // (heads/n_groups); D: (heads,); initial_state: (batch, heads, head_dim, state).
Every backend computes the same function; ``reference`` is the ground truth.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from ..errors import BackendUnavailableError, UnknownBackendError
from ._ssd_checks import check_ssd_inputs
from .scan import _triton_usable
from .ssd_chunked import DEFAULT_CHUNK
from .ssd_triton import interpreting

# name -> "module:function", imported when used (as the Mamba-1 registry in scan.py)
_SSD_BACKENDS: dict[str, str] = {
    "reference": "tokendyn.ops.ssd_reference:ssd_reference",
    "chunked": "tokendyn.ops.ssd_chunked:ssd_chunked",
    "triton": "tokendyn.ops.ssd_triton:ssd_triton",
}


def ssd_backend_names() -> list[str]:
    """The SSD backend names (plus ``auto``)."""
    return [*_SSD_BACKENDS, "auto"]


def resolve_ssd_backend(backend: str, device=None) -> str:
    """The backend ``backend`` names: ``auto`` is ``chunked`` on every device (``triton``, the fused
    scan, is chosen by name). Raises :class:`UnknownBackendError` for a name that names none, and
    :class:`BackendUnavailableError` for ``triton`` on a ``device`` where it cannot run (Triton's
    interpreter, TRITON_INTERPRET=1, runs it on the CPU)."""
    if backend == "auto":
        return "chunked"
    if backend == "triton" and device is not None and not (_triton_usable(torch.device(device)) or interpreting()):
        raise BackendUnavailableError("the triton ssd backend needs a CUDA device and the triton package; use "
                                      "'chunked' or 'auto'.")
    if backend not in _SSD_BACKENDS:
        raise UnknownBackendError(
            f"unknown ssd scan backend {backend!r}; choose one of {', '.join(ssd_backend_names())}.")
    return backend


def _load(name: str) -> Callable:
    module, func = _SSD_BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), func)


def ssd_scan(x, dt, A, B, C, D=None, initial_state=None, return_final_state=False,
             backend: str = "auto", chunk_size: int = DEFAULT_CHUNK):
    """The Mamba-2 selective scan (SSD), docs/scan.md "The Mamba-2 (SSD) scan".

    Per batch and head h: S_t = exp(Δ_t A_h) S_{t-1} + Δ_t x_t ⊗ B_t,  y_t = S_t C_t + D_h x_t.

    Arguments:
        x: (batch, length, heads, head_dim).
        dt: (batch, length, heads), Δ after bias and softplus (positive).
        A: (heads,), negative (A = -exp(A_log)).
        B, C: (batch, length, n_groups, state); n_groups must divide heads.
        D: (heads,) or None. initial_state: (batch, heads, head_dim, state) or None (zeros).
        backend: ``reference`` (the recurrence, exact), ``chunked`` (the SSD block
            decomposition, parallel), ``triton`` (fused, forward and backward, on CUDA) or
            ``auto`` (``chunked``).
        chunk_size: steps per chunk of the ``chunked`` and ``triton`` backends.
    Returns y: (batch, length, heads, head_dim) in x's dtype; with ``return_final_state`` the
    pair (y, S_L), S_L: (batch, heads, head_dim, state) in float32 (float64 for float64 x).
    Raises :class:`~tokendyn.errors.ScanInputError` (one sentence) for tensors of the wrong
    shape, dtype or device, :class:`~tokendyn.errors.UnknownBackendError` for an unknown backend.
    """
    check_ssd_inputs(x, dt, A, B, C, D, initial_state)
    name = resolve_ssd_backend(backend, x.device)
    kwargs = {"chunk_size": chunk_size} if name in ("chunked", "triton") else {}
    return _load(name)(x, dt, A, B, C, D=D, initial_state=initial_state,
                       return_final_state=return_final_state, **kwargs)
