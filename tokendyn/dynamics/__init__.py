"""Continuous-time token dynamics (THEORY.md sections 2-4)."""

from .spectrum import EigenSignature, eigen_signature, io_eigvals, io_matrix, symmetric_io_eigvals

__all__ = ["EigenSignature", "eigen_signature", "io_eigvals", "io_matrix", "symmetric_io_eigvals"]
