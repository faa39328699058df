"""The registry of mixer families and of the variants that modify them.

A **family** is a mixer class together with its settings: ``"mamba1"`` ->
(:class:`~tokendyn.model.mamba1.Mamba1Settings`, :class:`~tokendyn.model.mixer.MambaMixer`). The
config names it in ``layer`` and holds an instance of its settings in ``mixer``. A **variant** is
a refinement of one or more families: a mixin class that overrides some of the family's methods,
with settings of its own (``"io_constraint"``, ``"reorder"`` for Mamba-1); the config holds the
settings of every variant of its family in ``variants`` (defaults: the variant is off), and the
variant modifies the layers where its settings' ``applies(layer_idx)`` is true.

Registering (at the bottom of the family's own module; ``tokendyn.model`` imports the built-in
ones, so they are registered before any config is made)::

    register_family("mamba1", Mamba1Settings, MambaMixer, interop=INTEROP, title="Mamba-1")
    register_variant("io_constraint", IOConstraintSettings, IOConstrained, families=("mamba1",))

What a family must implement: the mixer contract (:class:`tokendyn.model.contract.Mixer`, built
as ``cls(config, layer_idx=i)``) and the settings contract
(:class:`tokendyn.model.contract.FamilySettings`). Every option name (a field of a family's or a
variant's settings) is unique within a family and its variants, so a flat ``{"d_state": 8,
"io_constraint": "positive"}`` (older checkpoints, ``--mixer-option``) says unambiguously whose
option it is once the config's ``layer`` names the family; two families may share a name.

:func:`build_mixer` is the only way a backbone creates mixers, so a checkpoint's config alone says
which classes to rebuild: the loader, ``info``, ``analyze``, the exporters, the training specs and
the CLI read families and their settings from here, with no case for any of them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..errors import ConfigError

__all__ = ["Family", "Variant", "Interop", "register_family", "register_variant", "get_family", "family_names",
           "variant_names", "family_for_state_spaces", "family_for_hf", "mixer_class", "build_mixer",
           "active_variants", "option_names", "parse_option"]


@dataclass(frozen=True)
class Interop:
    """How a family's settings map onto the configs of other libraries (all optional).

    state_spaces_layer: mamba_ssm's ``ssm_cfg["layer"]`` for this family (``"Mamba1"``);
    read_ssm_cfg(ssm_cfg, source) -> settings keywords; write_ssm_cfg(settings, config) -> ssm_cfg.
    hf_model_type: transformers' ``model_type`` (``"mamba"``), hf_architecture its class name;
    read_hf(hf_config, source) -> settings keywords; write_hf(settings, config) -> the family's
    fields of transformers' config.json; hf_defaults: transformers' defaults of the model-wide fields
    (hidden_size, tie_word_embeddings, ...) where this family's transformers config has its own.
    The readers raise CheckpointError, naming ``source``, for fields they cannot represent; the
    writers for settings the other library cannot hold.
    """

    state_spaces_layer: str | None = None
    read_ssm_cfg: Callable[[dict, str], dict] | None = None
    write_ssm_cfg: Callable[[Any, Any], dict] | None = None
    hf_model_type: str | None = None
    hf_architecture: str | None = None
    read_hf: Callable[[dict, str], dict] | None = None
    write_hf: Callable[[Any, Any], dict] | None = None
    hf_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _field_names(settings_cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(settings_cls))


def _settings(settings_cls: type, value, overrides: Mapping[str, Any], whose: str):
    """An instance of ``settings_cls`` from ``value`` (None: the defaults; an instance; a dict of
    fields) with ``overrides`` applied; the class's own checks run on the result."""
    if isinstance(value, settings_cls):
        return dataclasses.replace(value, **overrides) if overrides else value
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"the settings of {whose} must be a {settings_cls.__name__} or a mapping of its fields, "
                          f"got {type(value).__name__}.")
    unknown = sorted(set(value) - set(_field_names(settings_cls)))
    if unknown:
        raise ConfigError(f"unknown {whose} setting(s): {', '.join(map(str, unknown))}.")
    return settings_cls(**{**value, **overrides})


@dataclass(frozen=True)
class _Entry:
    """What families and variants share: a name and a settings dataclass whose fields are options."""

    name: str
    settings_cls: type

    KIND = ""       # "family" | "variant"

    @property
    def cls(self) -> type:
        """The class the entry contributes (the family's mixer, the variant's mixin)."""
        raise NotImplementedError

    def options(self) -> tuple[str, ...]:
        """The option names (the settings' fields)."""
        return _field_names(self.settings_cls)

    def settings(self, value=None, overrides: Mapping[str, Any] | None = None):
        """The settings from ``value`` (None: the defaults; an instance; a dict of fields) with
        ``overrides`` applied; the settings' own checks run."""
        whose = f"layer {self.name!r}" if self.KIND == "family" else f"variant {self.name!r}"
        return _settings(self.settings_cls, value, overrides or {}, whose)


@dataclass(frozen=True)
class Variant(_Entry):
    """A registered variant: its settings class, the mixin, the families it applies to, and
    whether it keeps the model causal (a causal language model refuses one that does not)."""

    mixin: type
    families: tuple[str, ...]
    causal: bool = True

    KIND = "variant"

    @property
    def cls(self) -> type:
        return self.mixin


@dataclass(frozen=True)
class Family(_Entry):
    """A registered family: name, settings class, mixer class, interop, a title for people, and
    whether its mixer is causal (a causal language model refuses a family that is not)."""

    mixer_cls: type
    interop: Interop = Interop()
    title: str = ""
    causal: bool = True

    KIND = "family"

    @property
    def cls(self) -> type:
        return self.mixer_cls

    def variants(self) -> tuple[Variant, ...]:
        """The registered variants of this family, in registration (composition) order."""
        return tuple(v for v in _VARIANTS.values() if self.name in v.families)

    def split_options(self, options: Mapping[str, Any], whose: str = "MambaConfig") -> tuple[dict, dict[str, dict]]:
        """Sort flat options by owner: (the family's, {variant name: its options}). A name that
        belongs to neither raises ConfigError naming it."""
        own = set(self.options())
        by_variant = {v.name: set(v.options()) for v in self.variants()}
        family_kw: dict[str, Any] = {}
        variant_kw: dict[str, dict] = {}
        unknown = []
        for key, value in options.items():
            if key in own:
                family_kw[key] = value
                continue
            owner = next((name for name, names in by_variant.items() if key in names), None)
            if owner is None:
                unknown.append(str(key))
            else:
                variant_kw.setdefault(owner, {})[key] = value
        if unknown:
            raise ConfigError(f"unknown {whose} field(s): {', '.join(sorted(unknown))}"
                              f"{_not_of(self.name, unknown)}.")
        return family_kw, variant_kw


def _not_of(family: str, names) -> str:
    """' (... an option of another family)' when a name is another family's option."""
    others = [f.name for f in _FAMILIES.values() if f.name != family
              and any(n in f.options() or any(n in v.options() for v in f.variants()) for n in names)]
    if not others:
        return ""
    owners = " and ".join((", ".join(map(repr, others[:-1])), repr(others[-1]))) if len(others) > 1 else repr(others[0])
    plural = "s" if len(others) > 1 else ""
    return f" (option{'s' if len(names) > 1 else ''} of layer{plural} {owners}, not of {family!r})"


_FAMILIES: dict[str, Family] = {}
_VARIANTS: dict[str, Variant] = {}
_COMPOSED: dict[tuple[type, ...], type] = {}


def _add(table: dict, entry: _Entry):
    """Put ``entry`` into ``table``, unless the same classes are registered under its name already;
    refuse another entry of that name, settings that are no dataclass, and an option name another
    family or variant owns."""
    owner = f"{entry.KIND} {entry.name!r}"
    old = table.get(entry.name)
    if old is not None:
        if (old.settings_cls, old.cls) != (entry.settings_cls, entry.cls):
            raise ValueError(f"{owner} is registered twice")
        return old
    if not dataclasses.is_dataclass(entry.settings_cls):
        raise TypeError(f"the settings of {owner} must be a dataclass")
    # a flat option is read against the config's family, so two families may share a name (both
    # Mamba-1 and Mamba-2 have d_state); within a family and its variants every name has one owner
    for name in entry.options():
        others = [o for o in _owners(name) if o is not entry and o.name != entry.name and _related(o, entry)]
        if others:
            raise ValueError(f"{owner}: option {name!r} is already an option of {others[0].KIND} {others[0].name!r}")
    table[entry.name] = entry
    return entry


def _owners(name: str) -> list[_Entry]:
    return [e for e in (*_FAMILIES.values(), *_VARIANTS.values()) if name in e.options()]


def _families_of(entry: _Entry) -> set[str]:
    return set(entry.families) if isinstance(entry, Variant) else {entry.name}


def _related(a: _Entry, b: _Entry) -> bool:
    """Whether a config can hold both entries' options at once: they share a family (a family is
    related to itself and to its variants; two families never are)."""
    if isinstance(a, Family) and isinstance(b, Family):
        return False
    return bool(_families_of(a) & _families_of(b))


def register_family(name: str, settings_cls: type, mixer_cls: type, *, interop: Interop | None = None,
                    title: str = "", causal: bool = True) -> Family:
    """Register a mixer family under ``name`` (the config's ``layer``): ``settings_cls`` a dataclass
    (:class:`~tokendyn.model.contract.FamilySettings`), ``mixer_cls`` a module satisfying
    :class:`~tokendyn.model.contract.Mixer`. Registering the same classes again is a no-op.
    ``causal=False``: the mixer looks at later tokens (a causal language model refuses it)."""
    return _add(_FAMILIES, Family(name, settings_cls, mixer_cls, interop or Interop(), title or name, causal))


def register_variant(name: str, settings_cls: type, mixin: type, *, families: tuple[str, ...],
                     causal: bool = True) -> Variant:
    """Register a variant of ``families``: ``mixin`` is put before the family's class (``super()``
    is the family) for every layer whose settings say ``applies(layer_idx)``. Variants compose
    in registration order (the first registered is first in the method resolution order).
    ``causal=False``: the variant breaks causality (a causal language model refuses it)."""
    return _add(_VARIANTS, Variant(name, settings_cls, mixin, tuple(families), causal))


def family_names() -> tuple[str, ...]:
    """Names of the registered families (values of the config's ``layer``)."""
    return tuple(_FAMILIES)


def variant_names() -> tuple[str, ...]:
    """Names of the registered variants, in composition order."""
    return tuple(_VARIANTS)


def get_family(name: str) -> Family:
    """The family registered as ``name``; ConfigError for an unknown one."""
    family = _FAMILIES.get(name) if isinstance(name, str) else None
    if family is None:
        raise ConfigError(f"unknown layer {name!r}; choose one of {', '.join(_FAMILIES)}.")
    return family


def family_for_state_spaces(layer: str) -> Family | None:
    """The family whose mamba_ssm ``ssm_cfg["layer"]`` is ``layer``, or None."""
    return next((f for f in _FAMILIES.values() if f.interop.state_spaces_layer == layer), None)


def family_for_hf(model_type: str | None = None, architectures=()) -> Family | None:
    """The family transformers calls ``model_type`` (or one of ``architectures``), or None."""
    for f in _FAMILIES.values():
        i = f.interop
        if (model_type is not None and i.hf_model_type == model_type) or (
                model_type is None and i.hf_architecture is not None and i.hf_architecture in architectures):
            return f
    return None


def option_names() -> dict[str, tuple[str, ...]]:
    """Every option name of the registry -> its owners ("family 'mamba1'", "variant 'reorder'"): one
    within a family and its variants, several where families share a name (d_state)."""
    out: dict[str, tuple[str, ...]] = {}
    for e in (*_FAMILIES.values(), *_VARIANTS.values()):
        for name in e.options():
            out[name] = (*out.get(name, ()), f"{e.KIND} {e.name!r}")
    return out


def parse_option(text: str) -> tuple[str, Any]:
    """``"NAME=VALUE"`` -> (name, value): the value read as JSON where it is JSON (``8``, ``0.5``,
    ``true``, ``[0, 1]``), as a string otherwise (``positive``)."""
    name, sep, raw = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name:
        raise ConfigError(f"a mixer option must be NAME=VALUE, got {text!r}.")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw.strip()
    return name, value


def active_variants(config, layer_idx: int | None) -> tuple[Variant, ...]:
    """The variants of ``config``'s family that modify layer ``layer_idx``."""
    family = get_family(config.layer)
    return tuple(v for v in family.variants() if config.variants[v.name].applies(layer_idx))


def mixer_class(config, layer_idx: int | None = None) -> type:
    """The mixer class for layer ``layer_idx`` of a model with ``config``: the family named by
    ``config.layer`` with every active variant mixed in (one class per combination, so
    ``isinstance`` and ``type(a) is type(b)`` behave)."""
    family = get_family(config.layer)
    mixins = tuple(v.mixin for v in active_variants(config, layer_idx))
    if not mixins:
        return family.mixer_cls
    key = (*mixins, family.mixer_cls)
    if key not in _COMPOSED:
        name = "".join(m.__name__ for m in mixins) + family.mixer_cls.__name__
        _COMPOSED[key] = type(name, key, {"__module__": __name__, "__doc__": family.mixer_cls.__doc__})
    return _COMPOSED[key]


def build_mixer(config, layer_idx: int | None = None) -> nn.Module:
    """A mixer for layer ``layer_idx`` of a model with ``config`` (MambaConfig or
    ClassifierConfig); the only way a backbone creates its mixers."""
    return mixer_class(config, layer_idx)(config, layer_idx=layer_idx)
