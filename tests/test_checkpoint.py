"""Checkpoints against transformers as the oracle: HF -> tokendyn, tokendyn -> HF,
state-spaces (mamba_ssm) -> tokendyn, and tokendyn's own round trip."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never reach the hub
transformers = pytest.importorskip("transformers")

from tokendyn.model import MambaConfig, MambaLM  # noqa: E402 -- after HF_HUB_OFFLINE and importorskip
from tokendyn.model.checkpoint import export_hf, inspect_checkpoint, load_model, save_model  # noqa: E402 -- after HF_HUB_OFFLINE and importorskip
from tokendyn.model.checkpoint_layouts import config_kwargs_hf, config_to_hf  # noqa: E402 -- after HF_HUB_OFFLINE and importorskip
from tokendyn.model.mamba1 import expected_shapes  # noqa: E402 -- after HF_HUB_OFFLINE and importorskip

TOL = 1e-4
L = 13

# Two transformers models: the tied one has an unpadded vocabulary (100, not a multiple
# of 8) and transformers' defaults; the untied one a padded vocabulary (104 = 100
# padded to 8, as converted mamba_ssm checkpoints have) and non-default mixer settings.
HF_VARIANTS = {
    "tied": dict(hidden_size=64, num_hidden_layers=2, vocab_size=100, state_size=8, tie_word_embeddings=True),
    "untied": dict(hidden_size=64, num_hidden_layers=2, vocab_size=104, state_size=8, tie_word_embeddings=False,
                   conv_kernel=3, expand=3, time_step_rank=6, use_bias=True, use_conv_bias=False),
}


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its initial value (D and the norms start at exactly 1),
    so that a parameter read into the wrong place changes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


_HF_LOGITS: dict[tuple[int, int], torch.Tensor] = {}


def _hf_logits(hf_model, ids: torch.Tensor) -> torch.Tensor:
    """transformers' logits (its CPU path is a slow loop, so each (model, ids) runs once)."""
    key = (id(hf_model), id(ids))
    if key not in _HF_LOGITS:
        with torch.no_grad():
            _HF_LOGITS[key] = hf_model(ids).logits
    return _HF_LOGITS[key]


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).to(torch.float32)


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 100, (2, L), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """name -> (directory written by save_pretrained, the transformers model)."""
    out = {}
    for i, (name, kw) in enumerate(HF_VARIANTS.items()):
        torch.manual_seed(10 + i)
        model = transformers.MambaForCausalLM(transformers.MambaConfig(use_mambapy=False, **kw)).eval()
        _perturb(model, seed=20 + i)
        d = tmp_path_factory.mktemp(f"hf-{name}")
        model.save_pretrained(d)
        out[name] = (d, model)
    d = tmp_path_factory.mktemp("hf-sharded")
    out["tied"][1].save_pretrained(d, max_shard_size="60KB")
    out["sharded"] = (d, out["tied"][1])
    return out


@pytest.mark.parametrize("name", ["tied", "untied", "sharded"])
def test_hf_checkpoint_gives_transformers_logits(hf, ids, name):
    directory, hf_model = hf[name]
    model = load_model(directory)
    assert model.checkpoint_layout == "hf-transformers"
    expected = _hf_logits(hf_model, ids)
    got = _logits(model, ids)
    assert got.shape == expected.shape  # the vocabulary is neither padded further nor cut
    assert (got - expected).abs().max().item() <= TOL
    info = inspect_checkpoint(directory)
    assert info.n_params == hf_model.num_parameters() == sum(p.numel() for p in model.parameters())
    if name == "sharded":
        assert len([f for f in info.files if f.endswith(".safetensors")]) > 1


def test_hf_config_fields_map_onto_tokendyn(hf):
    cfg = inspect_checkpoint(hf["untied"][0]).config
    kw = HF_VARIANTS["untied"]
    assert (cfg.d_model, cfg.n_layer, cfg.d_state) == (kw["hidden_size"], kw["num_hidden_layers"], kw["state_size"])
    assert (cfg.d_conv, cfg.expand, cfg.dt_rank_value) == (kw["conv_kernel"], kw["expand"], kw["time_step_rank"])
    assert (cfg.bias, cfg.conv_bias, cfg.tie_embeddings) == (True, False, False)
    assert cfg.padded_vocab_size == kw["vocab_size"]


def _write_state_spaces(directory: Path, hf_model, vocab_size: int, pad_multiple: int, fmt: str) -> Path:
    """A mamba_ssm-style checkpoint of the same weights: its names, its config.json."""
    c = hf_model.config
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v.detach().clone()
             for k, v in hf_model.state_dict().items()}
    if c.tie_word_embeddings:
        state["lm_head.weight"] = state["backbone.embedding.weight"]  # torch.save of a tied mamba_ssm model keeps both
    config = {
        "d_model": c.hidden_size, "d_intermediate": 0, "n_layer": c.num_hidden_layers, "vocab_size": vocab_size,
        "ssm_cfg": {"d_state": c.state_size, "d_conv": c.conv_kernel, "expand": c.expand,
                    "dt_rank": c.time_step_rank, "conv_bias": c.use_conv_bias, "bias": c.use_bias},
        "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "pad_vocab_size_multiple": pad_multiple, "tie_embeddings": c.tie_word_embeddings,
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    if fmt == "bin":
        torch.save(state, directory / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        state.pop("lm_head.weight") if c.tie_word_embeddings else None
        save_file(state, str(directory / "model.safetensors"))
    return directory


# tied: vocabulary 100 padded to a multiple of 4 (= 100 rows); untied: 100 padded to 8 (= 104 rows).
@pytest.mark.parametrize("name,pad,fmt", [("tied", 4, "bin"), ("untied", 8, "bin"), ("untied", 8, "safetensors")])
def test_state_spaces_checkpoint_matches_hf(hf, ids, tmp_path, name, pad, fmt):
    hf_dir, hf_model = hf[name]
    d = _write_state_spaces(tmp_path / "ss", hf_model, vocab_size=100, pad_multiple=pad, fmt=fmt)
    model = load_model(d)
    assert model.checkpoint_layout == "state-spaces"
    assert model.config.vocab_size == 100 and model.config.pad_vocab_size_multiple == pad
    from_hf = load_model(hf_dir)
    assert (_logits(model, ids) - _hf_logits(hf_model, ids)).abs().max().item() <= TOL
    assert torch.equal(_logits(model, ids), _logits(from_hf, ids))


@pytest.mark.parametrize("name", ["tied", "untied"])
def test_tokendyn_layout_round_trip(hf, ids, tmp_path, name):
    model = load_model(hf[name][0])
    save_model(model, tmp_path / "td")
    again = load_model(tmp_path / "td")
    assert again.checkpoint_layout == "tokendyn"
    assert again.config == model.config
    assert torch.equal(_logits(again, ids), _logits(model, ids))
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    with safe_open(str(tmp_path / "td" / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
    tied = model.config.tie_embeddings
    assert ("lm_head.weight" in stored) == (not tied)  # a tied head is stored once, as the embedding
    assert (again.lm_head.weight is again.backbone.embedding.weight) == tied


def test_fresh_model_round_trip_keeps_padding(tmp_path):
    torch.manual_seed(3)
    config = MambaConfig(d_model=32, n_layer=2, vocab_size=50, d_state=4, pad_vocab_size_multiple=8)
    model = MambaLM(config).eval()
    model.save(tmp_path / "td")
    again = load_model(tmp_path / "td")
    assert again.config == config and again.config.padded_vocab_size == 56
    x = torch.randint(0, 50, (3, 7))
    assert torch.equal(_logits(again, x), _logits(model, x))


def test_classifier_round_trip(tmp_path):
    from tokendyn.model import ClassifierConfig, MambaClassifier

    torch.manual_seed(7)
    model = MambaClassifier(ClassifierConfig(input_dim=5, n_classes=3, d_model=16, n_layer=2, d_state=4)).eval()
    save_model(model, tmp_path / "clf")
    again = load_model(tmp_path / "clf")
    assert isinstance(again, MambaClassifier) and again.config == model.config
    x = torch.randn(2, 9, 5)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


@pytest.mark.parametrize("tie", [True, False])
def test_export_hf_loads_in_transformers(tmp_path, tie):
    torch.manual_seed(4)
    config = MambaConfig(d_model=48, n_layer=2, vocab_size=90, d_state=6, tie_embeddings=tie)
    model = MambaLM(config).eval()
    _perturb(model, seed=5)
    export_hf(model, tmp_path / "hf")
    hf_model = transformers.MambaForCausalLM.from_pretrained(tmp_path / "hf", use_mambapy=False).eval()
    x = torch.randint(0, 90, (2, L), generator=torch.Generator().manual_seed(6))
    ours, theirs = _logits(model, x), _hf_logits(hf_model, x)
    assert theirs.shape == ours.shape == (2, L, config.padded_vocab_size)
    assert (ours - theirs).abs().max().item() <= TOL
    assert (hf_model.lm_head.weight.data_ptr() == hf_model.backbone.embeddings.weight.data_ptr()) == tie
    back = load_model(tmp_path / "hf")
    assert back.checkpoint_layout == "hf-transformers"
    assert (_logits(back, x) - ours).abs().max().item() <= TOL


def test_dtype_and_device_arguments(hf, ids):
    directory, hf_model = hf["tied"]
    model = load_model(directory, device="cpu", dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    with torch.no_grad():
        got = model(ids)
    assert (got - _hf_logits(hf_model, ids).double()).abs().max().item() <= TOL
    assert {p.dtype for p in load_model(directory, dtype="bfloat16").parameters()} == {torch.bfloat16}

_configs = st.builds(
    MambaConfig,
    d_model=st.integers(4, 40), n_layer=st.integers(1, 3), vocab_size=st.integers(5, 70),
    d_state=st.integers(1, 9), d_conv=st.integers(2, 5), expand=st.integers(1, 3),
    dt_rank=st.one_of(st.just("auto"), st.integers(1, 6)), conv_bias=st.booleans(), bias=st.booleans(),
    rms_norm=st.booleans(), tie_embeddings=st.booleans(), pad_vocab_size_multiple=st.sampled_from([1, 8, 16]),
    norm_epsilon=st.sampled_from([1e-5, 1e-6]),
)


@settings(max_examples=15, deadline=None)
@given(config=_configs)
def test_expected_shapes_are_the_models_parameters(config):
    """The loader's list of tensors (mamba_ssm's names and shapes) is exactly what MambaLM
    stores, across bias/conv_bias/LayerNorm/tying variants."""
    state = {k: tuple(v.shape) for k, v in MambaLM(config).state_dict().items()}
    if config.tie_embeddings:
        state.pop("lm_head.weight")
    assert expected_shapes(config) == state


@settings(max_examples=25, deadline=None)
@given(config=_configs.filter(lambda c: c.rms_norm))
def test_hf_config_translation_round_trips(config):
    back = MambaConfig(**config_kwargs_hf(config_to_hf(config), config.padded_vocab_size, "test"))
    assert back.vocab_size == back.padded_vocab_size == config.padded_vocab_size
    for name in ("d_model", "n_layer", "d_state", "d_conv", "expand", "dt_rank_value", "conv_bias", "bias",
                 "norm_epsilon", "tie_embeddings", "residual_in_fp32", "dt_min", "dt_max", "dt_init",
                 "dt_scale", "dt_init_floor", "d_inner"):
        assert getattr(back, name) == getattr(config, name), name
    # transformers accepts the file's fields as they are.
    hf_config = transformers.MambaConfig(**config_to_hf(config))
    assert hf_config.intermediate_size == config.d_inner and hf_config.time_step_rank == config.dt_rank_value


def test_layernorm_model_round_trips_in_both_mamba_ssm_layouts(tmp_path):
    torch.manual_seed(8)
    config = MambaConfig(d_model=16, n_layer=2, vocab_size=30, d_state=4, rms_norm=False, tie_embeddings=True)
    model = MambaLM(config).eval()
    _perturb(model, seed=9)
    x = torch.randint(0, 30, (2, 6))
    save_model(model, tmp_path / "td")
    # mamba_ssm's layout for the same model: its config.json, torch.save'd state dict.
    ss = tmp_path / "ss"
    ss.mkdir()
    (ss / "config.json").write_text(json.dumps({
        "d_model": 16, "n_layer": 2, "vocab_size": 30, "ssm_cfg": {"d_state": 4}, "rms_norm": False,
    }))
    torch.save(model.state_dict(), ss / "pytorch_model.bin")
    for d in (tmp_path / "td", ss):
        again = load_model(d)
        assert not again.config.rms_norm
        assert torch.equal(_logits(again, x), _logits(model, x))


def test_saved_files_have_a_plain_files_mode(tmp_path):
    """The safetensors writer makes private files; weights get the mode of any other file (0666
    less the umask), as config.json does."""
    import os

    from tokendyn.model import MambaConfig, MambaLM

    MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=64)).save(tmp_path / "ck")
    mask = os.umask(0)
    os.umask(mask)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "ck" / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
