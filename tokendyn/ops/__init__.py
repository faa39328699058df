"""Selective scan backends behind one dispatcher, and the scan's compute-dtype rule; the
Mamba-2 (SSD) scan's backends behind its own (``ssd_scan``), with its step and matrix form.

Imports nothing of tokendyn's beyond :mod:`tokendyn.errors`, so that the model, the dynamics and
the analysis can all build on it. :func:`resolve_backend` is the one place that decides what
``auto`` means and whether a backend can run; :func:`compute_dtype` the one place that decides
the dtype a scan (and a model's recurrent state) accumulates in.
"""

from .reference import compute_dtype, selective_scan_reference
from .scan import (
    available_backends,
    backend_names,
    check_backend_name,
    check_scan_inputs,
    get_backend,
    resolve_backend,
    selective_scan,
)
from .ssd import resolve_ssd_backend, ssd_backend_names, ssd_scan
from .ssd_chunked import ssd_chunked
from .ssd_reference import ssd_matrix, ssd_reference, ssd_step

__all__ = [
    "selective_scan",
    "selective_scan_reference",
    "compute_dtype",
    "available_backends",
    "backend_names",
    "check_backend_name",
    "check_scan_inputs",
    "get_backend",
    "resolve_backend",
    "ssd_scan",
    "ssd_reference",
    "ssd_chunked",
    "ssd_step",
    "ssd_matrix",
    "ssd_backend_names",
    "resolve_ssd_backend",
]
