"""The registry of mixer families and of the refinements that modify them.

A *family* is a mixer class (``"mamba1"`` -> :class:`~tokendyn.model.mixer.MambaMixer`),
named by the config field ``layer``. A *variant* is a refinement of a family, a mixin
class that overrides one of the family's extension points (``selective_inputs``,
``effective_x_proj_weight``, ``arrange_tokens`` / ``restore_order``); the config
selects it (e.g. ``io_constraint != "none"``). :func:`build_mixer` composes the
family with every variant the config selects for a layer, so refinements combine in
one model (the io-matrix constraint and token reordering override different points).

:func:`build_mixer` is the only way a backbone creates mixers, so a checkpoint's
config alone says which classes to rebuild: the loader, ``info``, ``analyze`` and the
exporters need no case for any variant.

Registering a family::

    @register_mixer("mamba1")
    class MambaMixer(nn.Module): ...

Registering a variant (``applies(config, layer_idx) -> bool``)::

    @register_variant("io_constraint", applies=lambda cfg, i: cfg.io_constraint != "none")
    class IOConstrained: ...          # methods that override the family's, calling super()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from ..errors import ConfigError

__all__ = ["register_mixer", "register_variant", "build_mixer", "mixer_class", "mixer_families", "variant_names"]

_FAMILIES: dict[str, type] = {}


@dataclass(frozen=True)
class _Variant:
    name: str
    applies: Callable[[object, int | None], bool]
    mixin: type


_VARIANTS: list[_Variant] = []
_COMPOSED: dict[tuple[type, ...], type] = {}


def _load_builtins() -> None:
    # The built-in families and variants register themselves when their modules are
    # imported; importing here (not at the top) keeps the import graph one-way.
    from . import io_constraint, mixer, reorder_mixer  # noqa: F401 -- imported to register the built-ins


def register_mixer(name: str):
    """Class decorator: register a mixer family under ``name`` (the config's ``layer``)."""
    def decorate(cls: type) -> type:
        if name in _FAMILIES and _FAMILIES[name] is not cls:
            raise ValueError(f"mixer family {name!r} is registered twice")
        _FAMILIES[name] = cls
        return cls
    return decorate


def register_variant(name: str, applies: Callable[[object, int | None], bool]):
    """Class decorator: register a refinement mixin, used for every layer where
    ``applies(config, layer_idx)`` is true. Mixins compose in registration order
    (the first registered is first in the method resolution order)."""
    def decorate(cls: type) -> type:
        if any(v.name == name and v.mixin is not cls for v in _VARIANTS):
            raise ValueError(f"variant {name!r} is registered twice")
        if all(v.name != name for v in _VARIANTS):
            _VARIANTS.append(_Variant(name, applies, cls))
        return cls
    return decorate


def mixer_families() -> tuple[str, ...]:
    """Names of the registered mixer families (values of the config's ``layer``)."""
    _load_builtins()
    return tuple(_FAMILIES)


def variant_names() -> tuple[str, ...]:
    """Names of the registered variants, in composition order."""
    _load_builtins()
    return tuple(v.name for v in _VARIANTS)


def mixer_class(config, layer_idx: int | None = None) -> type:
    """The mixer class for layer ``layer_idx`` of a model with ``config``: the family
    named by ``config.layer`` with every selected variant mixed in (one class per
    combination, so ``isinstance`` and ``type(a) is type(b)`` behave)."""
    _load_builtins()
    family_name = getattr(config, "layer", "mamba1")
    family = _FAMILIES.get(family_name)
    if family is None:
        raise ConfigError(f"unknown layer {family_name!r}; choose one of {', '.join(_FAMILIES)}.")
    mixins = tuple(v.mixin for v in _VARIANTS if v.applies(config, layer_idx))
    if not mixins:
        return family
    key = (*mixins, family)
    if key not in _COMPOSED:
        name = "".join(m.__name__ for m in mixins) + family.__name__
        _COMPOSED[key] = type(name, key, {"__module__": __name__, "__doc__": family.__doc__})
    return _COMPOSED[key]


def build_mixer(config, layer_idx: int | None = None) -> nn.Module:
    """A mixer for layer ``layer_idx`` of a model with ``config`` (MambaConfig or
    ClassifierConfig); the only way a backbone creates its mixers."""
    return mixer_class(config, layer_idx)(config, layer_idx=layer_idx)
