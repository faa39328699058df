"""Checkpoint analysis (``tokendyn analyze``): per-layer spectrum of S_Cᵀ S_B and predicted
regime (``layers``), token norms through the layers (``trajectories``), hidden attention
(``hidden_attention``), and the HTML/PNG/JSON report (``render``, imported on demand
because it needs matplotlib)."""

from .analyze import Analysis, InputTokens, analyze_checkpoint, analyze_model, choose_input, write_analysis
from .hidden_attention import attention_summary, hidden_attention, hidden_attention_reference
from .layers import LayerSpectrum, layer_spectrum, model_spectra, regime_from_signature, verdict
from .trajectories import TokenDynamics, dynamics_from_outputs, measure_dynamics

__all__ = [
    "Analysis", "InputTokens", "analyze_checkpoint", "analyze_model", "choose_input", "write_analysis",
    "attention_summary", "hidden_attention", "hidden_attention_reference",
    "LayerSpectrum", "layer_spectrum", "model_spectra", "regime_from_signature", "verdict",
    "TokenDynamics", "dynamics_from_outputs", "measure_dynamics",
]
