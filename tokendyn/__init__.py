"""tokendyn: token dynamics of deep selective state space models (Mamba).

Vo, Pham, Tong, Nguyen, "Demystifying the Token Dynamics of Deep Selective State
Space Models" (ICLR 2025) turned into a library: selective scan backends, Mamba
models and checkpoints, the continuous-time token dynamics, checkpoint analysis.
"""

from .errors import TokendynError
from .model.checkpoint import load_model  # tokendyn.load_model(path): any of the three checkpoint layouts
from .ops import selective_scan

__version__ = "0.1.0"

__all__ = ["selective_scan", "load_model", "TokendynError", "__version__"]
