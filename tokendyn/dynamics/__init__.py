"""Continuous-time token dynamics (THEORY.md sections 2-4)."""

from .integrate import METHODS, Integrator, Simulation, simulate, time_grid
from .regimes import (REGIMES, UNDETERMINED, least_squares_slope, RegimePrediction, TrajectoryRegime, blowup_bound, classify_trajectory,
                      convergence_constants, position_growth, predict_regime, predict_regime_1d)
from .spectrum import EigenSignature, eigen_signature, io_eigvals, io_matrix, symmetric_io_eigvals
from .vector_field import TokenSystem, vector_field, vector_field_naive

__all__ = [
    "EigenSignature", "eigen_signature", "io_eigvals", "io_matrix", "symmetric_io_eigvals",
    "TokenSystem", "vector_field", "vector_field_naive",
    "Integrator", "Simulation", "simulate", "time_grid", "METHODS",
    "REGIMES", "UNDETERMINED", "least_squares_slope", "RegimePrediction", "TrajectoryRegime", "predict_regime", "predict_regime_1d",
    "classify_trajectory", "blowup_bound", "convergence_constants", "position_growth",
]
