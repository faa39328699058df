"""Configuration of the language model and the sequence classifier.

A config has the model's own fields (d_model, n_layer, the norms, the vocabulary or the classes),
the name of its mixer family in ``layer`` (default ``"mamba1"``), that family's settings in
``mixer`` and the settings of each of the family's variants in ``variants`` (docs/models.md,
"Families and variants"). Which fields ``mixer`` and ``variants`` have is the registry's business
(:mod:`tokendyn.model.families`), not this module's.

Options may also be given flat, by name, which is how mamba_ssm's ``ssm_cfg`` and older
tokendyn config.json files spell them::

    MambaConfig(d_model=64, n_layer=2, vocab_size=256, d_state=8, io_constraint="positive")
    MambaConfig(d_model=64, n_layer=2, vocab_size=256, mixer=Mamba1Settings(d_state=8),
                variants={"io_constraint": {"io_constraint": "positive"}})     # the same config

and read flat too (``config.d_state``, ``config.d_inner``, ``config.io_constraint``).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import KW_ONLY, InitVar, dataclass, field, fields
from typing import Any

from ..errors import ConfigError
from ..ops import check_backend_name
from .families import Family, get_family

POOLINGS = ("mean", "last")

# the fields of the config itself that hold the family's and the variants' settings
_NESTED = ("mixer", "variants")


# Far above any model in use (the largest have a few hundred layers and widths of tens of
# thousands), and low enough that a typo is refused before anything is built or allocated.
LIMITS = {"d_model": 1 << 20, "n_layer": 1 << 14, "vocab_size": 1 << 24}


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    if name in LIMITS and value > LIMITS[name]:
        raise ConfigError(f"{name} {value:,} is above the largest tokendyn accepts ({LIMITS[name]:,}).")


def takes_flat_options(into: str):
    """Class decorator for a dataclass: ``cls(...)`` takes the family's and the variants' options
    as keywords. Every keyword that is not a field of ``cls`` is merged into the mapping passed
    as ``into`` (a dict field or an InitVar), so ``cls(d_state=8)`` means ``cls(**{into: {"d_state":
    8}})``, and ``dataclasses.replace(obj, d_state=8)`` works too. Which names are options, and
    whose, the registry decides when the options are used."""
    def decorate(cls):
        init = cls.__init__
        own = {f.name for f in fields(cls)} | {into}

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            flat = {k: kwargs.pop(k) for k in [k for k in kwargs if k not in own]}
            if flat:
                kwargs[into] = {**(kwargs.get(into) or {}), **flat}
            init(self, *args, **kwargs)

        cls.__init__ = __init__
        return cls
    return decorate


@dataclass(kw_only=True)
class _BackboneSettings:
    """Fields shared by both configs (keyword-only: each config's own required fields come first,
    positionally): the norms, the scan backend, and the mixer family with its settings."""

    rms_norm: bool = True
    residual_in_fp32: bool = True
    norm_epsilon: float = 1e-5
    scan_backend: str = "auto"
    # the mixer family (tokendyn.model.families), its settings, and its variants' settings
    layer: str = "mamba1"
    mixer: Any = None
    variants: dict = field(default_factory=dict)
    options: InitVar[dict | None] = None

    def __post_init__(self, options: dict | None = None):
        family = get_family(self.layer)
        family_kw, variant_kw = family.split_options(options or {}, type(self).__name__)
        if self.mixer is not None and not isinstance(self.mixer, (family.settings_cls, dict)):
            raise ConfigError(f"layer {self.layer!r} takes {family.settings_cls.__name__} settings, got "
                              f"{type(self.mixer).__name__}.")
        mixer = family.settings(self.mixer, family_kw)
        given = dict(self.variants or {})
        unknown = sorted(set(given) - {v.name for v in family.variants()})
        if unknown:
            raise ConfigError(f"layer {self.layer!r} has no variant {', '.join(map(repr, unknown))}.")
        variants = {v.name: v.settings(given.get(v.name), variant_kw.get(v.name)) for v in family.variants()}
        # set directly: __setattr__ refuses option names, and these two hold them
        object.__setattr__(self, "mixer", mixer)
        object.__setattr__(self, "variants", variants)
        object.__setattr__(self, "_settled", True)      # options readable (and no longer settable) by name
        for name in ("d_model", "n_layer"):
            _positive_int(name, getattr(self, name))
        check_backend_name(self.scan_backend)
        self.mixer.check(self)
        for settings in self.variants.values():
            settings.check(self)

    # ---- the family's options, read flat -------------------------------------------------------

    @property
    def family(self) -> Family:
        """The registered family named by ``layer``."""
        return get_family(self.layer)

    def __getattr__(self, name: str):
        # only reached when normal lookup fails: the family's and the variants' options, and the
        # family's derived sizes (d_inner, ...), by name
        d = self.__dict__
        if name.startswith("__") or not d.get("_settled"):
            raise AttributeError(name)
        mixer = d["mixer"]
        if name in _option_names(mixer):
            return getattr(mixer, name)
        for settings in d["variants"].values():
            if name in _option_names(settings):
                return getattr(settings, name)
        sizes = mixer.sizes(self.d_model)   # a field, or a property (HybridConfig)
        if name in sizes:
            return sizes[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        d = self.__dict__
        if d.get("_settled") and name not in d and (name in _option_names(d["mixer"]) or any(
                name in _option_names(s) for s in d["variants"].values())):
            raise ConfigError(f"{name} is an option of the mixer's settings; make a new config with "
                              f"dataclasses.replace(config, {name}=...).")
        super().__setattr__(name, value)

    def label(self) -> str:
        """The family and the options of the variants in use, e.g. ``"mamba1, io_constraint=positive"``."""
        parts = [self.layer]
        for name in self.active_variants():
            settings = self.variants[name]
            default = type(settings)()
            parts += [f"{f.name}={getattr(settings, f.name)}" for f in fields(settings)
                      if getattr(settings, f.name) != getattr(default, f.name)]
        return ", ".join(parts)

    def active_variants(self, layer_idx: int | None = None) -> list[str]:
        """Names of the variants that modify layer ``layer_idx`` (None: any layer)."""
        layers = range(self.n_layer) if layer_idx is None else (layer_idx,)
        return [name for name, s in self.variants.items() if any(s.applies(i) for i in layers)]

    # ---- serialisation ----------------------------------------------------------------------

    def to_dict(self) -> dict:
        """A JSON-able dict of every field, the settings nested: ``mixer`` the family's,
        ``variants`` {name: settings} (what checkpoints record; round-trips through ``from_dict``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("layer", *_NESTED)}
        out["layer"] = self.layer
        out["mixer"] = dataclasses.asdict(self.mixer)
        out["variants"] = {name: dataclasses.asdict(s) for name, s in self.variants.items()}
        return out

    def flat_dict(self) -> dict:
        """Every field with the settings flattened to their options by name, in the order a config
        without families had them: the family's options, the shared fields, ``layer``, the
        variants' options, then the config's own fields (run identities, core.json)."""
        out = dataclasses.asdict(self.mixer)
        for f in fields(self):
            if f.name in _NESTED:
                continue
            out[f.name] = getattr(self, f.name)
            if f.name == "layer":
                for settings in self.variants.values():
                    out.update(dataclasses.asdict(settings))
        return out

    def summary(self) -> dict:
        """:meth:`flat_dict` with the family's derived sizes (d_inner, ...) and :meth:`label` as
        ``label``, without the scan backend (a choice of the machine, not of the model): what
        ``analyze`` reports."""
        out = {k: v for k, v in self.flat_dict().items() if k != "scan_backend"}
        out.update({k: v for k, v in self.mixer.sizes(self.d_model).items() if k not in out})
        out["label"] = self.label()
        return out

    @classmethod
    def from_dict(cls, data: dict):
        """Build from a dict (nested as :meth:`to_dict` writes it, or flat); an unknown key raises
        :class:`ConfigError` naming it."""
        return cls(**data)


def _option_names(settings) -> tuple[str, ...]:
    return tuple(f.name for f in fields(settings))


@takes_flat_options("options")
@dataclass
class MambaConfig(_BackboneSettings):
    """A language model (mamba_ssm ``MambaLMHeadModel`` with ``d_intermediate=0``).

    ``vocab_size`` is the tokenizer's size; the embedding and head have
    ``padded_vocab_size`` rows (rounded up to ``pad_vocab_size_multiple``).
    ``scan_backend`` names the ``tokendyn.ops.selective_scan`` backend the mixers use.
    A causal model: a variant that breaks causality (token reordering) is refused.
    """

    d_model: int
    n_layer: int
    vocab_size: int
    _: KW_ONLY
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    # dropout on the final hidden states before the head (the authors' language models: 0.3);
    # active in training only
    final_dropout: float = 0.0

    def __post_init__(self, options: dict | None = None):
        super().__post_init__(options)
        p = self.final_dropout
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ConfigError(f"final_dropout must be a number in [0, 1), got {p!r}.")
        if not self.family.causal:
            raise ConfigError(f"the mixer family {self.layer!r} looks at later tokens, so a causal language model "
                              "cannot use it; it is for non-causal models such as the classifier.")
        for v in self.family.variants():
            if not v.causal and v.name in self.active_variants():
                raise ConfigError(f"the {v.name} variant breaks causality, so a causal language model cannot use "
                                  "it; it is for non-causal models such as the classifier.")
        _positive_int("vocab_size", self.vocab_size)
        _positive_int("pad_vocab_size_multiple", self.pad_vocab_size_multiple)

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and the head: vocab_size rounded up to the multiple."""
        m = self.pad_vocab_size_multiple
        return -(-self.vocab_size // m) * m


@takes_flat_options("options")
@dataclass
class ClassifierConfig(_BackboneSettings):
    """A classifier for sequences of continuous vectors (batch, L, input_dim), or for
    images cut into patches.

    ``pooling``: ``"mean"`` averages the final-normalised tokens over the sequence,
    ``"last"`` takes the last token (the only one that has seen the whole causal
    sequence). ``patch_size`` > 0: the input is images (batch, C, H, W), H and W multiples of
    the patch size, cut into non-overlapping patch_size × patch_size patches in raster order,
    each one token of input_dim = C·patch_size² values (28 × 28 with 4 × 4 patches: 49 tokens).
    ``bidirectional``: odd-numbered layers scan the sequence in reverse, so every token sees
    every other one after two layers (no extra parameters). ``n_positions`` > 0: a learned
    position embedding for up to that many tokens is added to the input embedding.
    """

    input_dim: int
    n_classes: int
    d_model: int
    n_layer: int
    _: KW_ONLY
    pooling: str = "mean"
    patch_size: int = 0
    bidirectional: bool = False
    n_positions: int = 0

    def __post_init__(self, options: dict | None = None):
        super().__post_init__(options)
        for name in ("input_dim", "n_classes"):
            _positive_int(name, getattr(self, name))
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}.")
        for name in ("patch_size", "n_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}.")
        if self.patch_size and self.input_dim % (self.patch_size ** 2):
            raise ConfigError(f"input_dim {self.input_dim} must be channels x patch_size^2 "
                              f"(a multiple of {self.patch_size ** 2}) for patch_size {self.patch_size}.")
        if not isinstance(self.bidirectional, bool):
            raise ConfigError(f"bidirectional must be true or false, got {self.bidirectional!r}.")

    @property
    def image_channels(self) -> int:
        """C of the images a patch classifier takes (input_dim / patch_size²); 0 for sequences."""
        return self.input_dim // self.patch_size ** 2 if self.patch_size else 0
