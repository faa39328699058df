"""Mamba-2 checkpoints against transformers' Mamba2ForCausalLM as the oracle: its layout and the
state-spaces layout load with its logits (float64 on both sides), generation through the recurrent
state equals its full forward, exports to both layouts round-trip, and broken checkpoints end in one
sentence with exit status 2."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never reach the hub
transformers = pytest.importorskip("transformers")

from tokendyn.cli import main  # noqa: E402 -- after HF_HUB_OFFLINE and importorskip
from tokendyn.model import MambaConfig, MambaLM, generate, load_model  # noqa: E402 -- after importorskip
from tokendyn.model.checkpoint import (  # noqa: E402 -- after importorskip
    export_hf,
    export_state_spaces,
    inspect_checkpoint,
    save_model,
)

REL = 1e-6     # transformers' Mamba2 rounds through float32 in its norms, A and scan even for a float64 model
L = 11


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """A small random Mamba2ForCausalLM (two groups, chunks shorter than the sequence, untied),
    its weights moved off the init, saved; and its float64 logits on ``ids``."""
    torch.manual_seed(0)
    cfg = transformers.Mamba2Config(vocab_size=40, hidden_size=16, state_size=6, num_hidden_layers=2, head_dim=8,
                                    num_heads=4, n_groups=2, expand=2, conv_kernel=3, chunk_size=4,
                                    tie_word_embeddings=False)
    model = transformers.Mamba2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    d = tmp_path_factory.mktemp("hf-mamba2")
    model.save_pretrained(d)
    ids = torch.randint(0, 40, (2, L), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model.double()(ids).logits
    return d, model, ids, logits


def test_hf_checkpoint_gives_transformers_logits(hf):
    d, hf_model, ids, expected = hf
    model = load_model(d, dtype=torch.float64)
    assert model.checkpoint_layout == "hf-transformers" and model.config.layer == "mamba2"
    assert (model.config.n_groups, model.config.head_dim, model.config.n_heads) == (2, 8, 4)
    with torch.no_grad():
        got = model(ids)
    assert got.shape == expected.shape and _rel(got, expected) <= REL
    assert inspect_checkpoint(d).n_params == hf_model.num_parameters()


def test_generation_through_the_state_equals_transformers_full_forward(hf):
    d, hf_model, ids, expected = hf
    model = load_model(d, dtype=torch.float64)
    with torch.no_grad():
        cache = model.allocate_cache(2)
        first = model(ids[:, :3], cache=cache)                 # prefill, then one token at a time
        rest = [model.step(ids[:, t], cache) for t in range(3, L)]
    assert _rel(torch.cat([first, torch.stack(rest, 1)], 1), expected) <= REL
    out = generate(model, ids[:, :4], 5)
    with torch.no_grad():
        seq = ids[:, :4]
        for _ in range(5):
            seq = torch.cat([seq, hf_model(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def _state_spaces_copy(hf_dir: Path, hf_model, directory: Path) -> Path:
    """The same weights in mamba_ssm's layout: its names, ssm_cfg with layer Mamba2, a .bin."""
    c = hf_model.config
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v.detach().float().clone()
             for k, v in hf_model.state_dict().items()}
    config = {"d_model": c.hidden_size, "d_intermediate": 0, "n_layer": c.num_hidden_layers,
              "vocab_size": c.vocab_size, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True,
              "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8,
              "tie_embeddings": False,
              "ssm_cfg": {"layer": "Mamba2", "d_state": c.state_size, "d_conv": c.conv_kernel, "expand": c.expand,
                          "headdim": c.head_dim, "ngroups": c.n_groups, "chunk_size": c.chunk_size}}
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    torch.save(state, directory / "pytorch_model.bin")
    return directory


def test_state_spaces_checkpoint_gives_transformers_logits(hf, tmp_path):
    d, hf_model, ids, expected = hf
    ss = _state_spaces_copy(d, hf_model, tmp_path / "ss")
    model = load_model(ss, dtype=torch.float64)
    assert model.checkpoint_layout == "state-spaces" and model.config.layer == "mamba2"
    with torch.no_grad():
        assert _rel(model(ids), expected) <= REL


def test_exports_round_trip(hf, tmp_path):
    d, _, ids, expected = hf
    model = load_model(d, dtype=torch.float64)
    with torch.no_grad():
        ours = model(ids)
    export_hf(model, tmp_path / "hf")
    back = transformers.Mamba2ForCausalLM.from_pretrained(tmp_path / "hf").double().eval()
    with torch.no_grad():
        assert _rel(back(ids).logits, ours) <= REL
    for directory, layout in ((tmp_path / "hf", "hf-transformers"), (export_state_spaces(model, tmp_path / "ss"),
                                                                      "state-spaces"),
                              (save_model(model, tmp_path / "own"), "tokendyn")):
        again = load_model(directory, dtype=torch.float64)
        assert again.checkpoint_layout == layout and again.config.layer == "mamba2"
        with torch.no_grad():
            torch.testing.assert_close(again(ids), ours, rtol=1e-12, atol=1e-12)


def test_a_trained_tied_model_exports_to_transformers(tmp_path):
    torch.manual_seed(3)
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=21, layer="mamba2", head_dim=8, d_state=4,
                                n_groups=2, chunk_size=8, dt_limit_min=0.01, dt_limit_max=0.5)).double().eval()
    ids = torch.randint(0, 21, (1, 9))
    export_hf(model, tmp_path / "hf")
    hf_model = transformers.Mamba2ForCausalLM.from_pretrained(tmp_path / "hf").double().eval()
    with torch.no_grad():
        assert _rel(hf_model(ids).logits, model(ids)) <= REL


def test_export_refuses_what_transformers_cannot_compute(tmp_path):
    from tokendyn.errors import CheckpointError

    model = MambaLM(MambaConfig(d_model=8, n_layer=1, vocab_size=10, layer="mamba2", head_dim=4, d_state=2,
                                norm_before_gate=True))
    with pytest.raises(CheckpointError, match="gated RMSNorm"):
        export_hf(model, tmp_path / "hf")


def run_cli(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return (0 if info.value.code is None else info.value.code), out, err


def test_info_names_the_family(hf, capsys, tmp_path):
    code, out, err = run_cli(["info", hf[0], "--json", tmp_path / "i.json"], capsys)
    assert code == 0, err
    assert "mamba2" in out and "Mamba-2" in out
    info = json.loads((tmp_path / "i.json").read_text())
    assert info["family"] == "mamba2" and info["config"]["mixer"]["n_groups"] == 2


def _broken(hf_dir: Path, tmp: Path, name: str, edit_config=None, edit_tensors=None) -> Path:
    d = tmp / name
    shutil.copytree(hf_dir, d)
    if edit_config:
        cfg = json.loads((d / "config.json").read_text())
        edit_config(cfg)
        (d / "config.json").write_text(json.dumps(cfg))
    if edit_tensors:
        tensors = load_file(str(d / "model.safetensors"))
        edit_tensors(tensors)
        save_file(tensors, str(d / "model.safetensors"))
    return d


BROKEN = {
    "head_dim": (dict(edit_config=lambda c: c.update(head_dim=5, num_heads=None)), "head_dim 5 does not divide"),
    "n_groups": (dict(edit_config=lambda c: c.update(n_groups=3)), "n_groups 3 does not divide the 4 heads"),
    "num_heads": (dict(edit_config=lambda c: c.update(num_heads=3)), "num_heads 3"),
    "missing": (dict(edit_tensors=lambda t: t.pop("backbone.layers.1.mixer.dt_bias")), "missing weight tensors"),
    "shape": (dict(edit_tensors=lambda t: t.update({"backbone.layers.0.mixer.A_log": torch.zeros(5)})),
              "has shape (5,)"),
    "nan": (dict(edit_tensors=lambda t: t["backbone.layers.0.mixer.D"].fill_(float("nan"))), "NaN"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_checkpoint_ends_in_one_sentence(hf, tmp_path, capsys, case):
    edits, fragment = BROKEN[case]
    d = _broken(hf[0], tmp_path, case, **edits)
    code, _, err = run_cli(["info", d], capsys)
    assert code == 2 and err.startswith("tokendyn: error: ") and err.count("\n") == 1, err
    assert fragment in err and "Traceback" not in err, err


def test_settings_round_trip_through_both_interops():
    from tokendyn.model.mamba2 import Mamba2Settings, read_hf, read_ssm_cfg, write_hf, write_ssm_cfg

    config = MambaConfig(d_model=16, n_layer=1, vocab_size=10, layer="mamba2", head_dim=8, d_state=4, n_groups=2,
                         chunk_size=8, dt_limit_min=0.01, dt_limit_max=0.5, bias=True, conv_bias=False)
    s = config.mixer
    assert Mamba2Settings(**read_ssm_cfg(json.loads(json.dumps(write_ssm_cfg(s, config))), "x")) == s
    hf_cfg = {"hidden_size": 16, **json.loads(json.dumps(write_hf(s, config)))}
    assert Mamba2Settings(**read_hf(hf_cfg, "x")) == s
    # no upper limit: mamba_ssm's inf, transformers' {"__float__": "Infinity"}, or null
    for high in (float("inf"), {"__float__": "Infinity"}, None):
        assert read_ssm_cfg({"dt_limit": [0.0, high]}, "x")["dt_limit_max"] is None


@pytest.mark.parametrize("ssm_cfg,fragment", [
    ({"d_ssm": 8}, "d_ssm 8"),
    ({"D_has_hdim": True}, "D_has_hdim"),
    ({"dt_limit": [0.0]}, "dt_limit"),
    ({"headdim": 8, "colour": 1}, "colour"),
])
def test_state_spaces_fields_tokendyn_cannot_compute_are_refused(ssm_cfg, fragment):
    from tokendyn.errors import CheckpointError
    from tokendyn.model.mamba2 import read_ssm_cfg

    with pytest.raises(CheckpointError, match=fragment):
        read_ssm_cfg(ssm_cfg, "x")
