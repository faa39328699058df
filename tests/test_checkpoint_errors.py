"""Bad checkpoints: each ends in one CheckpointError sentence, and `tokendyn info`
exits non-zero with that sentence and no traceback."""

from __future__ import annotations

import json
import os
import pickletools
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tokendyn.cli import main
from tokendyn.errors import CheckpointError, ConfigError
from tokendyn.model import MambaConfig
from tokendyn.model.checkpoint import export_hf, inspect_checkpoint, load_model
from tokendyn.model.mamba1 import expected_shapes

SMALL = dict(d_model=16, n_layer=2, vocab_size=30, d_state=4, d_conv=3, expand=2)


def _tensors(config: MambaConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in expected_shapes(config).items()}


def _state_spaces_config(kw: dict) -> dict:
    return {
        "d_model": kw["d_model"], "n_layer": kw["n_layer"], "vocab_size": kw["vocab_size"],
        "ssm_cfg": {"d_state": kw["d_state"], "d_conv": kw["d_conv"], "expand": kw["expand"]},
        "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "pad_vocab_size_multiple": 8, "tie_embeddings": True,
    }


def _write(directory: Path, config: dict | None, tensors: dict | None, fmt: str = "bin") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config))
    if tensors is not None:
        if fmt == "bin":
            torch.save(tensors, directory / "pytorch_model.bin")
        else:
            save_file(tensors, str(directory / "model.safetensors"))
    return directory


def _good(directory: Path, fmt: str = "bin") -> Path:
    return _write(directory, _state_spaces_config(SMALL), _tensors(MambaConfig(**SMALL)), fmt)


class _RunsCode:
    """Unpickling this calls os.system: exactly what weights_only=True must refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _case_missing_path(tmp):
    return tmp / "does-not-exist", "does not exist"


def _case_missing_config(tmp):
    return _write(tmp / "c", None, _tensors(MambaConfig(**SMALL))), "no config.json"


def _case_bad_json(tmp):
    d = _good(tmp / "c")
    (d / "config.json").write_text("{not json")
    return d, "not valid JSON"


def _case_unknown_layout(tmp):
    return _write(tmp / "c", {"n_embd": 64, "n_head": 4}, _tensors(MambaConfig(**SMALL))), "no known layout"


def _case_other_model_type(tmp):
    return _write(tmp / "c", {"model_type": "llama", "hidden_size": 8}, {}), "'llama'"


def _case_mamba2_state_spaces_with_mamba1_fields(tmp):
    cfg = _state_spaces_config(SMALL)
    cfg["ssm_cfg"].update(layer="Mamba2", dt_rank=2)
    return _write(tmp / "c", cfg, _tensors(MambaConfig(**SMALL))), "does not know for Mamba-2: dt_rank"


def _case_mamba2_state_spaces_with_mamba1_tensors(tmp):
    cfg = _state_spaces_config(SMALL)
    cfg["ssm_cfg"].update(layer="Mamba2", headdim=4)
    return _write(tmp / "c", cfg, _tensors(MambaConfig(**SMALL))), "missing weight tensors"


def _case_mamba2_state_spaces_other_layer(tmp):
    cfg = _state_spaces_config(SMALL)
    cfg["ssm_cfg"] = {"layer": "Mamba3"}
    return _write(tmp / "c", cfg, _tensors(MambaConfig(**SMALL))), "ssm_cfg.layer 'Mamba3'"


def _case_mamba2_hf_heads_do_not_fit(tmp):
    # transformers' default head_dim 64 does not divide d_inner = 2 x 16
    cfg = {"model_type": "mamba2", "architectures": ["Mamba2ForCausalLM"], "hidden_size": 16}
    return _write(tmp / "c", cfg, {}), "head_dim 64 does not divide d_inner 32"


def _case_hybrid(tmp):
    cfg = _state_spaces_config(SMALL)
    cfg["attn_layer_idx"] = [1]
    return _write(tmp / "c", cfg, _tensors(MambaConfig(**SMALL))), "attention"


def _case_no_weights(tmp):
    return _write(tmp / "c", _state_spaces_config(SMALL), None), "no weights"


def _case_shape_mismatch(tmp):
    t = _tensors(MambaConfig(**SMALL))
    name = "backbone.layers.1.mixer.x_proj.weight"
    t[name] = torch.randn(t[name].shape[0] + 1, t[name].shape[1])
    return _write(tmp / "c", _state_spaces_config(SMALL), t), "x_proj.weight"


def _case_config_wider_than_weights(tmp):
    cfg = _state_spaces_config(SMALL)
    cfg["d_model"] = 24  # weights were made for d_model 16
    return _write(tmp / "c", cfg, _tensors(MambaConfig(**SMALL))), "has shape"


def _case_nan(tmp):
    t = _tensors(MambaConfig(**SMALL))
    t["backbone.layers.0.mixer.A_log"][2, 1] = float("nan")
    return _write(tmp / "c", _state_spaces_config(SMALL), t, "safetensors"), "A_log"


def _case_inf(tmp):
    t = _tensors(MambaConfig(**SMALL))
    t["backbone.norm_f.weight"][0] = float("inf")
    return _write(tmp / "c", _state_spaces_config(SMALL), t), "NaN or infinite"


def _case_truncated_safetensors(tmp):
    d = _good(tmp / "c", "safetensors")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    return d, "truncated"


def _case_truncated_header(tmp):
    d = _good(tmp / "c", "safetensors")
    (d / "model.safetensors").write_bytes(b"\x05")
    return d, "truncated"


def _case_truncated_bin(tmp):
    d = _good(tmp / "c", "bin")
    f = d / "pytorch_model.bin"
    f.write_bytes(f.read_bytes()[:300])
    return d, "truncated"


def _case_missing_tensor(tmp):
    t = _tensors(MambaConfig(**SMALL))
    del t["backbone.layers.1.mixer.dt_proj.bias"]
    fragment = "missing weight tensors: backbone.layers.1.mixer.dt_proj.bias"
    return _write(tmp / "c", _state_spaces_config(SMALL), t), fragment


def _case_extra_tensor(tmp):
    t = _tensors(MambaConfig(**SMALL))
    t["backbone.layers.2.mixer.D"] = torch.ones(32)
    return _write(tmp / "c", _state_spaces_config(SMALL), t), "does not use"


def _case_integer_tensor(tmp):
    t = _tensors(MambaConfig(**SMALL))
    t["backbone.layers.0.mixer.D"] = torch.ones(32, dtype=torch.int64)
    return _write(tmp / "c", _state_spaces_config(SMALL), t), "floating-point"


def _case_tied_but_different(tmp):
    t = _tensors(MambaConfig(**SMALL))
    t["lm_head.weight"] = t["backbone.embedding.weight"] + 1.0
    return _write(tmp / "c", _state_spaces_config(SMALL), t), "tied"


def _case_invalid_value(tmp):
    cfg = _state_spaces_config(SMALL)
    cfg["ssm_cfg"]["d_state"] = -3
    return _write(tmp / "c", cfg, _tensors(MambaConfig(**SMALL))), "d_state"


def _case_shard_outside(tmp):
    d = _write(tmp / "c", _state_spaces_config(SMALL), None)
    index = {"weight_map": {"backbone.norm_f.weight": "../elsewhere.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return d, "not a file in"


CASES = {name[len("_case_"):]: fn for name, fn in sorted(globals().items()) if name.startswith("_case_")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_checkpoint_raises_one_sentence(case, tmp_path):
    path, fragment = CASES[case](tmp_path)
    with pytest.raises(CheckpointError) as info:
        inspect_checkpoint(path)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message and message.endswith(".")


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_checkpoint_cli_exits_nonzero_without_traceback(case, tmp_path, capsys):
    path, fragment = CASES[case](tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["info", str(path)])
    assert info.value.code != 0
    err = capsys.readouterr().err
    assert err.startswith("tokendyn: error: ") and fragment in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_load_model_raises_the_same_error(tmp_path):
    path, fragment = _case_shape_mismatch(tmp_path)
    with pytest.raises(CheckpointError, match="x_proj.weight"):
        load_model(path)


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    d = tmp_path / "evil"
    t = _tensors(MambaConfig(**SMALL))
    t["backbone.norm_f.weight"] = _RunsCode(marker)  # type: ignore[assignment]
    _write(d, _state_spaces_config(SMALL), t)
    # The file really carries a call to os.system (posix.system on Linux) ...
    with zipfile.ZipFile(d / "pytorch_model.bin") as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    strings = [str(arg) for op, arg, _ in pickletools.genops(pkl) if op.name in ("GLOBAL", "SHORT_BINUNICODE")]
    assert any(s.endswith("system") for s in strings) and any(s.startswith(("os", "posix")) for s in strings)
    # ... and loading it refuses without running it.
    with pytest.raises(CheckpointError, match="could run code"):
        inspect_checkpoint(d)
    with pytest.raises(CheckpointError, match="could run code"):
        load_model(d)
    assert not marker.exists()


@pytest.mark.parametrize("dtype", ["int8", torch.int64])
def test_load_model_refuses_a_non_float_dtype(tmp_path, dtype):
    with pytest.raises(ConfigError, match="dtype"):
        load_model(_good(tmp_path / "c"), dtype=dtype)


def test_export_refuses_layernorm_models(tmp_path):
    from tokendyn.model import MambaLM

    model = MambaLM(MambaConfig(**SMALL, rms_norm=False))
    with pytest.raises(CheckpointError, match="RMSNorm"):
        export_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf" / "model.safetensors").exists()


def test_console_script_exits_2_without_traceback(tmp_path):
    path, _ = _case_nan(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "tokendyn", "info", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "NaN or infinite" in proc.stderr
