"""`tokendyn info PATH [--json PATH]` on all three layouts (and a tokendyn classifier)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from tokendyn.cli import app  # noqa: E402 -- after HF_HUB_OFFLINE and importorskip
from tokendyn.model import ClassifierConfig, MambaClassifier, MambaConfig, MambaLM  # noqa: E402 -- after HF_HUB_OFFLINE and importorskip
from tokendyn.model.checkpoint import save_model  # noqa: E402 -- after HF_HUB_OFFLINE and importorskip


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """layout -> (directory, parameter count counted independently, d_model)."""
    torch.manual_seed(0)
    out = {}
    hf_model = transformers.MambaForCausalLM(
        transformers.MambaConfig(hidden_size=32, num_hidden_layers=2, vocab_size=64, state_size=4, use_mambapy=False)
    )
    d = tmp_path_factory.mktemp("hf")
    hf_model.save_pretrained(d)
    out["hf-transformers"] = (d, hf_model.num_parameters(), 32)

    # mamba_ssm's layout: its config.json and a torch.save'd state dict (tied head saved twice).
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in hf_model.state_dict().items()}
    state["lm_head.weight"] = state["backbone.embedding.weight"]
    d = tmp_path_factory.mktemp("ss")
    (d / "config.json").write_text(json.dumps({
        "d_model": 32, "n_layer": 2, "vocab_size": 60, "ssm_cfg": {"d_state": 4},
        "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 16,
    }))
    torch.save(state, d / "pytorch_model.bin")
    out["state-spaces"] = (d, hf_model.num_parameters(), 32)

    lm = MambaLM(MambaConfig(d_model=24, n_layer=3, vocab_size=40, d_state=4, tie_embeddings=False))
    d = save_model(lm, tmp_path_factory.mktemp("td"))
    out["tokendyn"] = (d, sum(p.numel() for p in lm.parameters()), 24)
    return out


@pytest.mark.parametrize("layout", ["hf-transformers", "state-spaces", "tokendyn"])
def test_info_prints_layout_config_and_parameter_count(checkpoints, layout, tmp_path):
    directory, n_params, d_model = checkpoints[layout]
    out = tmp_path / "sub" / "info.json"
    result = CliRunner().invoke(app, ["info", str(directory), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert f"layout: {layout}" in result.output
    assert f"parameters: {n_params:,}" in result.output
    assert "d_model" in result.output and "n_layer" in result.output
    data = json.loads(out.read_text())
    assert data["layout"] == layout
    assert data["n_params"] == n_params
    assert data["config"]["d_model"] == d_model
    assert data["files"][0] == "config.json" and len(data["files"]) == 2
    assert data["kind"] == "lm"


def test_info_on_a_classifier_checkpoint(tmp_path):
    model = MambaClassifier(ClassifierConfig(input_dim=5, n_classes=3, d_model=16, n_layer=1, d_state=4))
    model.save(tmp_path / "clf")
    out = tmp_path / "clf.json"
    result = CliRunner().invoke(app, ["info", str(tmp_path / "clf"), "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["layout"] == "tokendyn" and data["kind"] == "classifier"
    assert data["n_params"] == sum(p.numel() for p in model.parameters())
    assert data["config"]["n_classes"] == 3
