"""`tokendyn analyze` on every checkpoint layout the loader reads, and on bad input."""

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from tokendyn.cli import app, main
from tokendyn.model import MambaConfig, MambaLM

runner = CliRunner()
FILES = ("report.html", "analysis_spectra.png", "analysis_radial_velocity.png", "analysis_flow.png",
         "analysis_token_norms.png", "analysis_growth.png", "analysis_hidden_attention.png")


def make_word_tokenizer(path, words):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(dict.fromkeys(words))}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))


@pytest.fixture(scope="module")
def tokendyn_ckpt(tmp_path_factory):
    """A tokendyn-layout checkpoint with a word-level tokenizer.json beside it."""
    d = tmp_path_factory.mktemp("tokendyn_ckpt")
    torch.manual_seed(0)
    MambaLM(MambaConfig(d_model=16, n_layer=3, vocab_size=60, d_state=4)).save(d)
    words = "In the beginning God created heaven and earth . , ; : was without form void darkness".split()
    make_word_tokenizer(d / "tokenizer.json", words)
    return d


@pytest.fixture(scope="module")
def hf_ckpt(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("hf_ckpt")
    torch.manual_seed(1)
    cfg = transformers.MambaConfig(vocab_size=64, hidden_size=16, state_size=4, num_hidden_layers=2,
                                   time_step_rank=2, expand=2, conv_kernel=4)
    transformers.MambaForCausalLM(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def state_spaces_ckpt(tmp_path_factory):
    """mamba_ssm's layout: its config.json fields and a torch.save'd state dict."""
    d = tmp_path_factory.mktemp("ss_ckpt")
    torch.manual_seed(2)
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=50, d_state=4))
    (d / "config.json").write_text(json.dumps({
        "d_model": 16, "n_layer": 2, "vocab_size": 50, "ssm_cfg": {"d_state": 4},
        "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "pad_vocab_size_multiple": 8, "tie_embeddings": True}))
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    return d


def _run_ok(args):
    res = runner.invoke(app, ["analyze", *args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


def _check_report(out, layout, n_layer, n_tokens, source):
    for f in FILES:
        assert (out / f).is_file() and (out / f).stat().st_size > 1000, f
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 6 and "<table>" in html
    data = json.loads((out / "analysis.json").read_text())
    assert data["layout"] == layout
    assert data["input"]["source"] == source and data["input"]["n_tokens"] == n_tokens
    assert len(data["layers"]) == n_layer
    for i, row in enumerate(data["layers"]):
        assert row["index"] == i
        d_inner = data["config"]["d_inner"]
        assert row["io_eigs_positive"] + row["io_eigs_negative"] + row["io_eigs_zero"] == d_inner
        assert row["predicted_regime"] in ("divergence", "convergence", "static")
        assert row["norm_growth"] > 0
    norms = torch.tensor(data["token_norms"])
    assert norms.shape == (n_layer, n_tokens) and torch.isfinite(norms).all()
    # per-layer growth is the geometric mean of the per-token ratios of consecutive rows
    rows = torch.cat([torch.tensor(data["embedding_norms"])[None], norms])
    growth = (rows[1:] / rows[:-1]).log().mean(-1).exp()
    torch.testing.assert_close(growth, torch.tensor([r["norm_growth"] for r in data["layers"]], dtype=growth.dtype))
    assert data["provenance"]["command"].startswith("tokendyn")
    return data


def test_tokendyn_layout_builtin_corpus(tokendyn_ckpt, tmp_path):
    if shutil.which("bible") is None:
        pytest.skip("needs the bible program (bible-kjv)")
    out = tmp_path / "out"
    _run_ok([str(tokendyn_ckpt), "--max-tokens", "40", "--out", str(out), "--layers", "0,-1", "--channels", "1",
             "--channels", "5"])
    data = _check_report(out, "tokendyn", 3, 40, "builtin-corpus")
    assert [(a["layer"], a["channel"]) for a in data["hidden_attention"]] == [(0, 1), (0, 5), (2, 1), (2, 5)]
    assert data["input"]["tokenizer"].endswith("tokenizer.json")


def test_tokendyn_layout_text_file_truncate_and_json_path(tokendyn_ckpt, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("In the beginning God created the heaven and the earth . " * 3)   # 33 words
    out, js = tmp_path / "out", tmp_path / "elsewhere" / "a.json"
    # too long: an error by default ...
    code, err = _run_main([str(tokendyn_ckpt), "--text", str(text), "--max-tokens", "10", "--out", str(out)])
    assert code == 2 and "has 33 tokens, more than --max-tokens 10" in err and "--truncate" in err
    _one_sentence(err)
    # ... the first tokens with --truncate
    _run_ok([str(tokendyn_ckpt), "--text", str(text), "--max-tokens", "10", "--truncate", "--out", str(out),
             "--json", str(js)])
    data = json.loads(js.read_text())
    assert data["input"]["source"] == "file" and data["input"]["n_tokens"] == 10
    assert data["input"]["truncated"] and data["input"]["text_tokens"] == 33
    assert not (out / "analysis.json").exists() and (out / "report.html").is_file()


def test_hf_layout_random_tokens(hf_ckpt, tmp_path):
    out = tmp_path / "out"
    _run_ok([str(hf_ckpt), "--max-tokens", "24", "--out", str(out)])
    data = _check_report(out, "hf-transformers", 2, 24, "random")
    assert "no tokenizer" in data["input"]["description"]


def test_state_spaces_layout(state_spaces_ckpt, tmp_path):
    out = tmp_path / "out"
    _run_ok([str(state_spaces_ckpt), "--max-tokens", "20", "--out", str(out), "--seed", "3"])
    _check_report(out, "state-spaces", 2, 20, "random")


def _run_main(args):
    """The console entry point: user errors are one line on stderr and exit status 2."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main(["analyze", *args])
    return exc.value.code, err.getvalue()


def _one_sentence(err):
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("tokendyn: error: ") and lines[0].endswith("."), err
    assert "Traceback" not in err


def test_bad_inputs(tokendyn_ckpt, hf_ckpt, tmp_path):
    out = str(tmp_path / "out")
    cases = []
    # not a checkpoint
    cases.append(([str(tmp_path / "missing")], "does not exist"))
    (tmp_path / "plain").mkdir()
    cases.append(([str(tmp_path / "plain")], "config.json"))
    # another architecture (GPT-2: no x_proj)
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 16, "n_layer": 2,
                                                  "vocab_size": 50, "architectures": ["GPT2LMHeadModel"]}))
    cases.append(([str(gpt2)], "gpt2"))
    # empty text, missing text, text without a tokenizer
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    cases.append(([str(tokendyn_ckpt), "--text", str(empty)], "empty"))
    cases.append(([str(tokendyn_ckpt), "--text", str(tmp_path / "none.txt")], "does not exist"))
    some = tmp_path / "some.txt"
    some.write_text("hello")
    cases.append(([str(hf_ckpt), "--text", str(some)], "no tokenizer.json"))
    # bad options
    cases.append(([str(tokendyn_ckpt), "--layers", "7"], "layer 7 does not exist"))
    cases.append(([str(tokendyn_ckpt), "--channels", "x"], "must be integers"))
    cases.append(([str(tokendyn_ckpt), "--max-tokens", "0"], "at least 1"))
    for args, needle in cases:
        code, err = _run_main([*args, "--out", out])
        assert code == 2, (args, err)
        assert needle in err, (args, err)
        _one_sentence(err)


def test_gpt2_weights_without_x_proj(tmp_path):
    """A Mamba-looking config over weights of another architecture is refused, not half-read."""
    d = tmp_path / "fake"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"d_model": 16, "n_layer": 1, "vocab_size": 50}))
    from safetensors.torch import save_file
    save_file({"transformer.h.0.attn.c_attn.weight": torch.zeros(16, 48),
               "transformer.wte.weight": torch.zeros(50, 16)}, str(d / "model.safetensors"))
    code, err = _run_main([str(d), "--out", str(tmp_path / "o")])
    assert code == 2
    _one_sentence(err)
