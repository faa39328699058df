"""The seed-grid experiments, one module each, every one a :class:`tokendyn.train.experiment.Experiment`
named ``EXPERIMENT``: a module of this package that defines one is an experiment (its
``tokendyn train`` command, its grid, its summary and, with a ``section``, its part of
``tokendyn reproduce`` follow from it); the other modules are their helpers.

:data:`EXPERIMENTS`: name -> description, in the modules' alphabetical order.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import ConfigError
from ..train.experiment import Experiment


def _discover() -> dict[str, Experiment]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        exp = getattr(importlib.import_module(f"{__name__}.{info.name}"), "EXPERIMENT", None)
        if isinstance(exp, Experiment):
            found[exp.name] = exp
    return found


EXPERIMENTS: dict[str, Experiment] = _discover()


def get(name: str) -> Experiment:
    """The experiment called ``name``; :class:`ConfigError` for an unknown one."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}.")
    return EXPERIMENTS[name]
