"""``selective_scan``: one entry point, input checks, and backend dispatch.

Contract (same layout and meaning as mamba_ssm's ``selective_scan_fn``):
    u, delta, z: (batch, dim, length); A: (dim, state), real and (for stability) negative;
    B, C: (batch, state, length); D, delta_bias: (dim,).
Every backend computes the same function; ``reference`` is the ground truth.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from ..errors import BackendUnavailableError, ScanInputError, UnknownBackendError
from ._checks import check_tensors, shape_str

# name -> "module:function"; imported lazily so that a backend's dependencies
# (triton) are needed only when it is used.
_BACKENDS: dict[str, str] = {
    "reference": "tokendyn.ops.reference:selective_scan_reference",
    "chunked": "tokendyn.ops.chunked:selective_scan_chunked",
    "triton": "tokendyn.ops.triton_scan:selective_scan_triton",
}


# Where the Triton backend sends what its float32 kernels cannot compute (float64, length 0):
# the parallel PyTorch scan, exact in float64. (tokendyn.ops.triton_scan calls it directly, so
# that the backend module does not import this dispatcher, which loads it.)
EXACT_BACKEND = "chunked"


def backend_names() -> list[str]:
    """All backend names, available here or not (plus ``auto``)."""
    return [*_BACKENDS, "auto"]


def check_backend_name(name: str) -> str:
    """``name`` if it names a backend (or ``auto``); the one check of backend names, used by the
    dispatcher, the model config and ``set_scan_backend``. Raises :class:`UnknownBackendError`."""
    if name not in _BACKENDS and name != "auto":
        raise UnknownBackendError(f"unknown scan backend {name!r}; choose one of {', '.join(backend_names())}.")
    return name


def _triton_usable(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        importlib.import_module("triton")
        importlib.import_module("tokendyn.ops.triton_scan")
    except ImportError:
        return False
    return True


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device`` in this environment."""
    device = torch.device(device)
    names = []
    for name in _BACKENDS:
        if name == "triton":
            if _triton_usable(device):
                names.append(name)
            continue
        try:
            _load(name)
        except ImportError:
            continue
        names.append(name)
    return names


def resolve_backend(backend: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """The backend that runs a scan of ``dtype`` tensors on ``device``: the one policy for names.

    Unknown names are refused; ``auto`` is ``triton`` on a CUDA device where triton imports, else
    ``chunked``; ``triton`` where it cannot run is refused; float64 always runs in ``chunked``
    (the Triton kernels compute in float32, the PyTorch backends are float64-exact).
    Raises :class:`BackendUnavailableError` with one sentence.
    """
    check_backend_name(backend)
    device = torch.device(device)
    if backend == "auto":
        backend = "triton" if _triton_usable(device) else "chunked"
    elif backend == "triton" and not _triton_usable(device):
        raise BackendUnavailableError(
            "the triton scan backend needs a CUDA device and the triton package; use 'chunked' or 'auto'."
        )
    if backend == "triton" and dtype == torch.float64:
        return EXACT_BACKEND
    return backend


def _load(name: str) -> Callable:
    module, func = _BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), func)


def get_backend(name: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Callable:
    """The scan function for a backend name, as :func:`resolve_backend` decides it."""
    name = resolve_backend(name, device, dtype)
    try:
        return _load(name)
    except ImportError as exc:
        raise BackendUnavailableError(f"the {name} scan backend cannot be imported here: {exc}.") from exc


def check_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> None:
    """Raise :class:`ScanInputError` with one sentence if the tensors break the contract."""
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    check_tensors("selective_scan", named, one_device=False)     # devices: checked below, against u's
    if u.dim() != 3:
        raise ScanInputError(f"selective_scan: u must be (batch, dim, length), got shape {shape_str(u)}.")
    batch, dim, length = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ScanInputError(f"selective_scan: A must be (dim={dim}, state), got shape {shape_str(A)}.")
    state = A.shape[1]
    expect = {
        "delta": (batch, dim, length),
        "z": (batch, dim, length),
        "B": (batch, state, length),
        "C": (batch, state, length),
        "D": (dim,),
        "delta_bias": (dim,),
    }
    for name, shape in expect.items():
        t = named[name]
        if t is not None and tuple(t.shape) != shape:
            raise ScanInputError(
                f"selective_scan: {name} must have shape {shape}, got {shape_str(t)} "
                f"(u is (batch={batch}, dim={dim}, length={length}), A has state={state})."
            )
    devices = {t.device for t in named.values() if t is not None}
    if len(devices) > 1:
        raise ScanInputError(
            f"selective_scan: all tensors must be on one device, got {sorted(str(d) for d in devices)}."
        )


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend: str = "auto"):
    """Selective scan (S6), THEORY.md section 1.

    u, delta, z: (batch, dim, length); A: (dim, state); B, C: (batch, state, length);
    D, delta_bias: (dim,). Returns out: (batch, dim, length) in u's dtype; with
    ``return_last_state`` a pair (out, last_state) where last_state is h_L:
    (batch, dim, state).

    backend: ``reference`` (sequential, exact), ``chunked`` (parallel, pure PyTorch),
    ``triton`` (fused CUDA kernel) or ``auto`` (fastest available on u's device).
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    fn = get_backend(backend, u.device, u.dtype)
    return fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
              delta_softplus=delta_softplus, return_last_state=return_last_state)
