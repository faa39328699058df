"""Continuous-time token dynamics (THEORY.md sections 2-4, and the Mamba-2 (SSD) section)."""

from .integrate import METHODS, FlowSystem, Integrator, Simulation, simulate, time_grid
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
from .ssd_regimes import SSDSignatures, first_token_radial_velocity, radial_velocity, ssd_signatures
from .ssd_system import SSDSystem, ssd_vector_field, ssd_vector_field_naive
from .vector_field import TokenSystem, vector_field, vector_field_naive

__all__ = [
                      "METHODS",
                      "REGIMES",
                      "UNDETERMINED",
                      "EigenSignature",
                      "FlowSystem",
                      "Integrator",
                      "RegimePrediction",
                      "SSDSignatures",
                      "SSDSystem",
                      "Simulation",
                      "TokenSystem",
                      "TrajectoryRegime",
                      "blowup_bound",
                      "classify_trajectory",
                      "convergence_constants",
                      "eigen_signature",
                      "first_token_radial_velocity",
                      "io_eigvals",
                      "io_matrix",
                      "least_squares_slope",
                      "position_growth",
                      "predict_regime",
                      "predict_regime_1d",
                      "radial_velocity",
                      "simulate",
                      "ssd_signatures",
                      "ssd_vector_field",
                      "ssd_vector_field_naive",
                      "symmetric_io_eigvals",
                      "time_grid",
                      "vector_field",
                      "vector_field_naive",
]
