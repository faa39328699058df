"""The model package is open for families: a toy family defined here (a settings dataclass and a
trivial mixer, no edit to any Mamba-1 file) registers, builds a MambaLM through
MambaConfig(layer="toy", ...), runs forward and generation, saves and loads a checkpoint, and
`tokendyn info` names it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
from mixer_contract import check_mixer_contract
from typer.testing import CliRunner

from tokendyn.cli import app
from tokendyn.errors import CheckpointError, ConfigError
from tokendyn.model import ClassifierConfig, MambaConfig, MambaLM, MixerBase, MixerRun, families, generate, load_model
from tokendyn.model.contract import IOParameters
from tokendyn.model.internals import MixerInternals

# ---- the toy family: h_l = a·h_{l-1} + W_in x_l, out_l = W_out h_l (a decaying running sum) -------

@dataclass(frozen=True)
class ToySettings:
    decay: float = 0.5

    def __post_init__(self):
        if not 0 < self.decay < 1:
            raise ConfigError(f"decay must lie in (0, 1), got {self.decay!r}.")

    def check(self, config) -> None:
        pass

    def sizes(self, d_model: int) -> dict[str, int]:
        return {"d_inner": d_model, "d_state": 1}


class ToyMixer(MixerBase):
    def __init__(self, config, layer_idx=None):
        super().__init__()
        self.d_model, self.layer_idx, self.decay = config.d_model, layer_idx, config.mixer.decay
        self.in_proj = nn.Linear(self.d_model, self.d_model, bias=False)
        self.out_proj = nn.Linear(self.d_model, self.d_model, bias=False)

    def run(self, hidden_states, return_internals=False, return_state=False, norm=None):
        x = self.in_proj(hidden_states)                                    # (b, L, D)
        h = x.new_zeros(x.shape[0], self.d_model)
        ys = []
        for t in range(x.shape[1]):
            h = self.decay * h + x[:, t]
            ys.append(h)
        internals = None
        if return_internals:      # the same recurrence as a scan with Δ = 1, A = ln a, B = C = 0 (N = 1)
            u = x.transpose(1, 2)
            zeros = u.new_zeros(u.shape[0], 1, u.shape[2])
            internals = MixerInternals(x=u, delta=torch.ones_like(u), B=zeros, C=zeros)
        return MixerRun(self.out_proj(torch.stack(ys, 1)), internals, (h,) if return_state else None)

    def allocate_state(self, batch_size, device=None, dtype=None):
        w = self.in_proj.weight
        return (torch.zeros(batch_size, self.d_model, device=device or w.device, dtype=dtype or w.dtype),)

    def step_(self, hidden_states, h):
        h.mul_(self.decay).add_(self.in_proj(hidden_states))
        return self.out_proj(h)

    def io_parameters(self, detach=True):
        w = self.in_proj.weight
        d = self.d_model
        zeros = w.new_zeros(1, d)
        return IOParameters(S_B=zeros, S_C=zeros, S_Delta=w.new_zeros(d, d),
                            b_Delta=w.new_full((d,), math.log(math.e - 1)),       # softplus⁻¹(1): Δ = 1
                            A=w.new_full((d, 1), math.log(self.decay)))


@pytest.fixture
def toy(monkeypatch):
    """The registry with the toy family added, for this test only."""
    monkeypatch.setattr(families, "_FAMILIES", dict(families._FAMILIES))
    return families.register_family("toy", ToySettings, ToyMixer, title="Toy")


CFG = dict(d_model=8, n_layer=2, vocab_size=20)


def test_toy_family_satisfies_the_contract(toy):
    config = MambaConfig(**CFG, layer="toy", decay=0.25)
    assert config.mixer == ToySettings(0.25) and config.variants == {} and config.d_inner == 8
    torch.manual_seed(0)
    check_mixer_contract(families.build_mixer(config, 0), 8)


def test_toy_lm_runs_generates_saves_loads_and_info_names_it(toy, tmp_path):
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(**CFG, layer="toy", mixer=ToySettings(0.3))).eval()
    assert all(type(layer.mixer) is ToyMixer for layer in model.backbone.layers)
    ids = torch.randint(0, 20, (2, 7))
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == (2, 7, 24)
    out = generate(model, ids[:, :3], 4)
    with torch.no_grad():          # greedy generation is argmax over repeated full forwards
        seq = ids[:, :3]
        for _ in range(4):
            seq = torch.cat([seq, model(seq)[:, -1, :20].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)

    model.save(tmp_path / "toy")
    raw = json.loads((tmp_path / "toy" / "config.json").read_text())
    assert raw["layer"] == "toy" and raw["mixer"] == {"decay": 0.3} and raw["variants"] == {}
    again = load_model(tmp_path / "toy")
    assert again.config == model.config
    with torch.no_grad():
        assert torch.equal(again(ids), logits)

    res = CliRunner().invoke(app, ["info", str(tmp_path / "toy"), "--json", str(tmp_path / "info.json")])
    assert res.exit_code == 0, res.output
    assert "mixer family: toy (Toy)" in res.output and "decay" in res.output
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["family"] == "toy" and info["config"]["mixer"] == {"decay": 0.3}


def test_toy_options_are_checked_and_kept_apart(toy, tmp_path):
    with pytest.raises(ConfigError, match=r"decay must lie in \(0, 1\)"):
        MambaConfig(**CFG, layer="toy", decay=2.0)
    with pytest.raises(ConfigError, match="d_state.*layers? .*'mamba1'.*, not of 'toy'"):
        MambaConfig(**CFG, layer="toy", d_state=4)
    with pytest.raises(ConfigError, match="decay.*layer 'toy', not of 'mamba1'"):
        MambaConfig(**CFG, decay=0.5)
    from tokendyn.model.checkpoint import export_hf

    with pytest.raises(CheckpointError, match="layer 'toy' cannot be written"):
        export_hf(MambaLM(MambaConfig(**CFG, layer="toy")), tmp_path / "hf")


def test_an_option_name_is_owned_once_within_a_family(monkeypatch):
    monkeypatch.setattr(families, "_FAMILIES", dict(families._FAMILIES))
    monkeypatch.setattr(families, "_VARIANTS", dict(families._VARIANTS))

    @dataclass(frozen=True)
    class Clashing:
        d_state: int = 4

        def check(self, config) -> None:
            pass

        def sizes(self, d_model: int) -> dict[str, int]:
            return {"d_inner": d_model, "d_state": self.d_state}

    # a variant of Mamba-1 cannot take Mamba-1's name (a flat d_state would have two owners) ...
    with pytest.raises(ValueError, match="'d_state' is already an option of family 'mamba1'"):
        families.register_variant("clash", Clashing, object, families=("mamba1",))
    # ... another family can: the config's layer says whose d_state it is
    families.register_family("clash", Clashing, ToyMixer)
    assert MambaConfig(**CFG, layer="clash", d_state=7).mixer.d_state == 7


@pytest.mark.parametrize("mixer_layer", ["mamba1", "mamba2", "mambavision"])
def test_a_family_mixer_refuses_another_familys_config(mixer_layer):
    def config(layer):  # a classifier's config takes every family, causal or not
        return ClassifierConfig(input_dim=3, n_classes=2, d_model=64, n_layer=2, layer=layer)

    mixer_cls = families.get_family(mixer_layer).mixer_cls
    other = "mamba2" if mixer_layer == "mamba1" else "mamba1"
    with pytest.raises(ConfigError, match=f"needs a config of layer '{mixer_layer}', got layer '{other}'"):
        mixer_cls(config(other))
    assert mixer_cls(config(mixer_layer)).d_model == 64  # its own is taken
