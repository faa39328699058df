"""Mamba-1 models: config, S6 mixer, blocks, language model, sequence classifier,
recurrent inference and generation. Parameter names follow state-spaces mamba_ssm."""

from .blocks import Block, MambaBackbone, RMSNorm
from .classifier import MambaClassifier
from .config import ClassifierConfig, MambaConfig
from .generation import InferenceCache, generate, sample_next
from .lm import MambaLM
from .mixer import MambaMixer, MixerRun
from .outputs import MambaOutput, MixerInternals

__all__ = [
    "MambaConfig",
    "ClassifierConfig",
    "MambaMixer",
    "MixerRun",
    "Block",
    "MambaBackbone",
    "RMSNorm",
    "MambaLM",
    "MambaClassifier",
    "MambaOutput",
    "MixerInternals",
    "InferenceCache",
    "generate",
    "sample_next",
    "load_model",
    "save_model",
]


def __getattr__(name):
    # Checkpoint I/O lives in .checkpoint, which imports the model classes above;
    # resolving it lazily keeps that import one-way.
    if name in ("load_model", "save_model"):
        from . import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
