"""Exceptions a user can cause. Each carries one sentence that names the problem.

The CLI catches :class:`TokendynError` and exits non-zero with that sentence,
without a traceback; library users can catch the specific subclass.
"""


class TokendynError(Exception):
    """Base class of every error tokendyn raises for bad input."""


class ScanInputError(TokendynError, ValueError):
    """Tensors passed to ``selective_scan`` have the wrong shape, dtype or device."""


class BackendUnavailableError(TokendynError, RuntimeError):
    """A scan backend was requested that cannot run here (e.g. triton without CUDA)."""


class CheckpointError(TokendynError):
    """A checkpoint directory or file cannot be read as a Mamba model."""


class ConfigError(TokendynError, ValueError):
    """A configuration value is invalid."""


class UnknownBackendError(BackendUnavailableError, ConfigError):
    """A scan backend name that names no backend (a configuration value and an unavailable backend)."""


class DataError(TokendynError):
    """Input data (text, images, parameters, tokens) is missing or malformed."""


class TrainingDivergedError(TokendynError, FloatingPointError):
    """The training loss stopped being a finite number (too high a learning rate, most often)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM ended a command; the message says what remains (e.g. a training run's
    last checkpoint and how to continue from it), to follow "interrupted; " or "terminated; ".

    The latest one made is kept in ``Interrupted.latest``: the command-line layer turns Ctrl-C
    into an exit status on the way out, and reads what to say from there."""

    latest: "Interrupted | None" = None

    def __init__(self, message: str):
        super().__init__(message)
        Interrupted.latest = self
