"""Selective scan backends behind one dispatcher, and the scan's compute-dtype rule.

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
]
