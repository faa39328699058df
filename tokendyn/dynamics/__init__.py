"""Continuous-time token dynamics (THEORY.md sections 2-4)."""

from .integrate import METHODS, Integrator, Simulation, simulate, time_grid
from .regimes import (
                      REGIMES,
                      UNDETERMINED,
                      RegimePrediction,
                      TrajectoryRegime,
                      blowup_bound,
                      classify_trajectory,
                      convergence_constants,
                      least_squares_slope,
                      position_growth,
                      predict_regime,
                      predict_regime_1d,
)
from .spectrum import (
                      EigenSignature,
                      eigen_signature,
                      io_eigvals,
                      io_matrix,
                      symmetric_io_eigvals,
)
from .vector_field import TokenSystem, vector_field, vector_field_naive

__all__ = [
                      "METHODS",
                      "REGIMES",
                      "UNDETERMINED",
                      "EigenSignature",
                      "Integrator",
                      "RegimePrediction",
                      "Simulation",
                      "TokenSystem",
                      "TrajectoryRegime",
                      "blowup_bound",
                      "classify_trajectory",
                      "convergence_constants",
                      "eigen_signature",
                      "io_eigvals",
                      "io_matrix",
                      "least_squares_slope",
                      "position_growth",
                      "predict_regime",
                      "predict_regime_1d",
                      "simulate",
                      "symmetric_io_eigvals",
                      "time_grid",
                      "vector_field",
                      "vector_field_naive",
]
