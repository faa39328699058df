"""The mixer registry (tokendyn.model.families): families, variants and their settings, hooks, and
checkpoints that identify a model by kind + config (this version's nested config.json and the
flat ones of versions 1 and 2)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokendyn.errors import ConfigError
from tokendyn.model import (
    ClassifierConfig,
    Mamba1Settings,
    MambaClassifier,
    MambaConfig,
    MambaLM,
    MambaMixer,
    families,
    load_model,
)
from tokendyn.model.checkpoint import _expected, inspect_checkpoint, save_model
from tokendyn.model.families import build_mixer, family_names, mixer_class, register_variant, variant_names
from tokendyn.model.io_constraint import IOConstrained, IOConstraintSettings

CFG = dict(d_model=8, n_layer=2, vocab_size=30, d_state=3)
FORMAT_V2 = Path(__file__).parent / "data" / "format_v2"


def test_builtin_family_and_variant():
    assert "mamba1" in family_names()
    assert variant_names()[:2] == ("io_constraint", "reorder")
    cfg = MambaConfig(**CFG)
    assert mixer_class(cfg) is MambaMixer and type(build_mixer(cfg, 0)) is MambaMixer
    constrained = MambaConfig(**CFG, io_constraint="positive")
    cls = mixer_class(constrained, 1)
    assert issubclass(cls, IOConstrained) and issubclass(cls, MambaMixer)
    assert mixer_class(constrained, 0) is cls          # one class per combination
    assert build_mixer(constrained, 1).layer_idx == 1


def test_unknown_layer_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown layer 'mamba9'"):
        MambaConfig(**CFG, layer="mamba9")


def test_flat_and_nested_options_make_the_same_config():
    flat = MambaConfig(**CFG, io_constraint="positive", dt_rank=2)
    nested = MambaConfig(d_model=8, n_layer=2, vocab_size=30, mixer=Mamba1Settings(d_state=3, dt_rank=2),
                         variants={"io_constraint": IOConstraintSettings("positive")})
    as_dicts = MambaConfig(d_model=8, n_layer=2, vocab_size=30, mixer={"d_state": 3, "dt_rank": 2},
                           variants={"io_constraint": {"io_constraint": "positive"}})
    assert flat == nested == as_dicts == MambaConfig.from_dict(flat.to_dict())
    assert MambaConfig.from_dict(flat.flat_dict()) == flat
    assert (flat.d_state, flat.dt_rank_value, flat.d_inner, flat.io_constraint) == (3, 2, 16, "positive")
    assert flat.active_variants() == ["io_constraint"] and flat.label() == "mamba1, io_constraint=positive"
    assert dataclasses.replace(flat, io_constraint="none", d_state=4) == MambaConfig(**{**CFG, "d_state": 4},
                                                                                      dt_rank=2)
    with pytest.raises(ConfigError, match="an option of the mixer's settings"):
        flat.d_state = 5
    with pytest.raises(ConfigError, match="unknown MambaConfig field"):
        MambaConfig(**CFG, d_staet=3)
    with pytest.raises(ConfigError, match="unknown layer 'mamba1' setting"):
        MambaConfig(d_model=8, n_layer=2, vocab_size=30, mixer={"io_constraint": "positive"})
    with pytest.raises(ConfigError, match="no variant 'sideways'"):
        MambaConfig(**CFG, variants={"sideways": {}})


@dataclass(frozen=True)
class _ReverseSettings:
    reverse_test_layers: tuple = ()

    def applies(self, layer_idx):
        return layer_idx in self.reverse_test_layers

    def check(self, config):
        pass


@pytest.fixture
def scratch_registry(monkeypatch):
    """Register test variants without leaving them behind."""
    monkeypatch.setattr(families, "_VARIANTS", dict(families._VARIANTS))
    monkeypatch.setattr(families, "_COMPOSED", {})
    return families


class _Reversed:
    """A test variant: the scan sees the tokens in reverse order (both branches), and the
    output goes back to the original order. layer_ctx must carry the mixer's input."""

    seen_ctx = []

    def arrange_tokens(self, x, z, layer_ctx):
        type(self).seen_ctx.append(layer_ctx)
        return x.flip(-1), z.flip(-1), "flipped"

    def restore_order(self, y, ctx):
        assert ctx == "flipped"
        return y.flip(-1)


def test_token_hooks_are_called_around_the_scan(scratch_registry):
    register_variant("reverse_test", _ReverseSettings, _Reversed, families=("mamba1",))
    torch.manual_seed(0)
    cfg = MambaConfig(**CFG, io_constraint="mixed", reverse_test_layers=(1,))
    assert cfg.active_variants(1) == ["io_constraint", "reverse_test"]
    model = MambaLM(cfg).double()
    mixers = [layer.mixer for layer in model.backbone.layers]
    assert not isinstance(mixers[0], _Reversed) and isinstance(mixers[1], _Reversed)
    assert isinstance(mixers[1], IOConstrained)         # the two refinements compose
    m = mixers[1]
    h = torch.randn(2, 7, 8, dtype=torch.float64)
    _Reversed.seen_ctx.clear()
    out = m(h)
    assert torch.equal(_Reversed.seen_ctx[0]["hidden_states"], h) and _Reversed.seen_ctx[0]["layer_idx"] == 1
    # oracle: the same scan run by hand on the reversed tokens (conv first, in the original order)
    xz = torch.nn.functional.linear(h, m.in_proj.weight).transpose(1, 2)
    x, z = xz.chunk(2, dim=1)
    x = torch.nn.functional.silu(torch.nn.functional.conv1d(x, m.conv1d.weight, m.conv1d.bias,
                                                            padding=m.d_conv - 1, groups=m.d_inner)[..., :7])
    x, z = x.flip(-1), z.flip(-1)
    dt, B, C = m.selective_inputs(x)
    from tokendyn.ops import selective_scan

    y = selective_scan(x, dt, -torch.exp(m.A_log), B, C, m.D, z=z, delta_bias=m.dt_proj.bias,
                       delta_softplus=True, backend="reference").flip(-1)
    torch.testing.assert_close(out, torch.nn.functional.linear(y.transpose(1, 2), m.out_proj.weight),
                               rtol=1e-10, atol=1e-12)


def test_expected_tensors_come_from_the_model_for_every_variant():
    for kw in ({}, {"io_constraint": "positive"}, {"io_constraint": "mixed", "d_state": 16}):
        cfg = MambaConfig(**{**CFG, **kw})
        state = {k: tuple(v.shape) for k, v in MambaLM(cfg).state_dict().items() if k != "lm_head.weight"}
        assert _expected("lm", cfg) == state
        mixer_kw = {k: v for k, v in {**CFG, **kw}.items() if k != "vocab_size"}
        ccfg = ClassifierConfig(input_dim=2, n_classes=3, **mixer_kw)
        state = {k: tuple(v.shape) for k, v in MambaClassifier(ccfg).state_dict().items()}
        assert _expected("classifier", ccfg) == state


@pytest.mark.parametrize("legacy,kind", [("MambaLM", "lm"), ("MambaClassifier", "classifier")])
def test_checkpoints_of_the_first_writer_still_load(tmp_path, legacy, kind):
    """format_version 1 named the Python class ("architecture") and had no variant fields."""
    torch.manual_seed(1)
    if kind == "lm":
        model = MambaLM(MambaConfig(**CFG)).eval()
        x = torch.randint(0, 30, (2, 5))
    else:
        model = MambaClassifier(ClassifierConfig(input_dim=2, n_classes=3, d_model=8, n_layer=2, d_state=3)).eval()
        x = torch.randn(2, 5, 2)
    save_model(model, tmp_path / "m")
    raw = {"format": "tokendyn", "format_version": 1, "architecture": legacy, **model.config.flat_dict()}
    for key in ("layer", "io_constraint", "io_margin", "reorder", "reorder_tau", "reorder_power", "reorder_layers",
                "reorder_branches", "reorder_restore"):
        raw.pop(key)
    (tmp_path / "m" / "config.json").write_text(json.dumps(raw))
    again = load_model(tmp_path / "m")
    assert inspect_checkpoint(tmp_path / "m").kind == kind and again.config == model.config
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


@pytest.mark.parametrize("name", ["lm_io_positive", "classifier_reorder"])
def test_checkpoints_of_format_2_still_load(tmp_path, name):
    """Written by the version before families had their own settings (format_version 2, every option
    flat): the same config and the same outputs, and saved again in this version's nested form."""
    model = load_model(FORMAT_V2 / name)
    raw = json.loads((FORMAT_V2 / name / "config.json").read_text())
    assert raw["format_version"] == 2 and "mixer" not in raw
    newer = {"reorder_restore": True}      # options added since format 2, at their defaults
    written = {k: v for k, v in raw.items() if k not in ("format", "format_version", "kind")}
    assert model.config.flat_dict() == {**written, **newer}
    expected = load_file(str(FORMAT_V2 / name / "expected.safetensors"))
    with torch.no_grad():
        # float32 rounding may differ where an operation's kernel changed since (a product's
        # operand order): the same model to float32 rounding, not bit for bit
        torch.testing.assert_close(model(expected["input"]), expected["logits"], rtol=1e-5, atol=1e-6)
    model.save(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["format_version"] == 3 and again["mixer"]["d_state"] == 3 and "io_constraint" not in again
    assert load_model(tmp_path / "again").config == model.config


def test_unknown_kind_is_refused(tmp_path):
    from tokendyn.errors import CheckpointError

    MambaLM(MambaConfig(**CFG)).save(tmp_path / "m")
    raw = json.loads((tmp_path / "m" / "config.json").read_text())
    raw["kind"] = "vision"
    (tmp_path / "m" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="kind 'vision'"):
        load_model(tmp_path / "m")
