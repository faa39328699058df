"""Continuous-time token dynamics (THEORY.md sections 2-4)."""

from .integrate import METHODS, Simulation, simulate, time_grid
from .regimes import (REGIMES, RegimePrediction, TrajectoryRegime, blowup_bound, classify_trajectory,
                      convergence_constants, position_growth, predict_regime, predict_regime_1d)
from .spectrum import EigenSignature, eigen_signature, io_eigvals, io_matrix, symmetric_io_eigvals
from .vector_field import TokenSystem, scan_backend, vector_field, vector_field_naive

__all__ = [
    "EigenSignature", "eigen_signature", "io_eigvals", "io_matrix", "symmetric_io_eigvals",
    "TokenSystem", "vector_field", "vector_field_naive", "scan_backend",
    "Simulation", "simulate", "time_grid", "METHODS",
    "REGIMES", "RegimePrediction", "TrajectoryRegime", "predict_regime", "predict_regime_1d",
    "classify_trajectory", "blowup_bound", "convergence_constants", "position_growth",
]
