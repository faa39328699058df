"""Selective scan backends behind one dispatcher (imports nothing else of tokendyn's)."""

from .reference import selective_scan_reference
from .scan import (available_backends, backend_names, check_scan_inputs, get_backend,
                   resolve_backend, selective_scan)

__all__ = [
    "selective_scan",
    "selective_scan_reference",
    "available_backends",
    "backend_names",
    "check_scan_inputs",
    "get_backend",
    "resolve_backend",
]
