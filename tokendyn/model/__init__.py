"""Models: config, mixer families and their registry, the mixer contract, blocks, language
model, sequence classifier, recurrent inference, generation and checkpoints. Parameter names
follow state-spaces mamba_ssm.

The built-in mixer families (Mamba-1, Mamba-2, MambaVision) and their variants register themselves
when their modules are imported, which this package does first (docs/models.md, "Families and variants").
"""

# the built-in family and variants, registered in this order (the variants' composition order)
from . import io_constraint as _io_constraint  # noqa: F401 -- registers the variant "io_constraint"
from . import mamba2_mixer as _mamba2  # noqa: F401 -- registers the family "mamba2"
from . import mambavision as _mambavision  # noqa: F401 -- registers the family "mambavision"
from . import mixer as _mamba1  # noqa: F401 -- registers the family "mamba1"
from . import reorder_mixer as _reorder  # noqa: F401 -- registers the variant "reorder"
from .blocks import Block, MambaBackbone, RMSNorm
from .cache import InferenceCache
from .checkpoint import load_model, save_model
from .classifier import MambaClassifier
from .config import ClassifierConfig, MambaConfig
from .contract import IOParameters, Mixer, MixerBase, MixerRun
from .families import build_mixer, get_family, register_family, register_variant
from .generation import generate, sample_next
from .hybrid import HybridClassifier, HybridConfig
from .internals import MambaOutput, MixerInternals
from .lm import MambaLM
from .mamba1 import Mamba1Settings
from .mamba2 import Mamba2Settings
from .mamba2_mixer import Mamba2Mixer
from .mixer import MambaMixer

__all__ = [
    "MambaConfig",
    "ClassifierConfig",
    "Mamba1Settings",
    "MambaMixer",
    "Mamba2Settings",
    "Mamba2Mixer",
    "Mixer",
    "MixerBase",
    "MixerRun",
    "IOParameters",
    "register_family",
    "register_variant",
    "get_family",
    "build_mixer",
    "Block",
    "MambaBackbone",
    "RMSNorm",
    "MambaLM",
    "MambaClassifier",
    "HybridConfig",
    "HybridClassifier",
    "MambaOutput",
    "MixerInternals",
    "InferenceCache",
    "generate",
    "sample_next",
    "load_model",
    "save_model",
]
