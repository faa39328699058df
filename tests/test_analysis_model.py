"""Analysis of a real MambaLM: spectra from x_proj/dt_proj, hidden attention of a mixer
against its scan, token norms, and the choice of input tokens."""

import shutil

import pytest
import torch

from tokendyn.analysis.analyze import analyze_model, choose_input
from tokendyn.analysis.hidden_attention import hidden_attention
from tokendyn.analysis.layers import model_spectra
from tokendyn.errors import CheckpointError, DataError
from tokendyn.model import MambaConfig, MambaLM
from tokendyn.ops import selective_scan_reference


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MambaLM(MambaConfig(d_model=24, n_layer=3, vocab_size=40, d_state=6)).eval()


def test_spectra_from_raw_weights(model):
    """Rebuild S_B, S_C from x_proj by hand and compare with a dense D×D eigensolver."""
    cfg = model.config
    r, n = cfg.dt_rank_value, cfg.d_state
    for s, layer in zip(model_spectra(model), model.backbone.layers):
        W = layer.mixer.x_proj.weight.detach().double()
        S_B, S_C = W[r:r + n], W[r + n:r + 2 * n]
        M = S_C.T @ S_B
        dense = torch.linalg.eigvalsh(0.5 * (M + M.T))
        tol = 1e-8 * float(dense.abs().max())
        assert (s.positive, s.negative) == (int((dense > tol).sum()), int((dense < -tol).sum()))
        assert s.largest == pytest.approx(float(dense.max()), rel=1e-6)
        a = torch.exp(layer.mixer.A_log.detach().double())
        assert s.decay["max"] == pytest.approx(float(a.max()), rel=1e-6)


def test_hidden_attention_of_a_mixer_reproduces_its_scan(model):
    """P x from the model's own internals equals the scan output without D and z."""
    ids = torch.randint(0, 40, (1, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(ids, output_internals=True)
    for layer, m in zip(model.backbone.layers, out.internals):
        A = layer.mixer.io_parameters()["A"].double()
        x, delta, B, C = (t.double() for t in (m.x, m.delta, m.B, m.C))
        P = hidden_attention(delta, A, B, C)
        y = torch.einsum("bdlj,bdj->bdl", P, x)
        torch.testing.assert_close(y, selective_scan_reference(x, delta, A, B, C), rtol=1e-9, atol=1e-11)


def test_analyze_model_norms_and_attention(model):
    inputs = choose_input(None, 40, max_tokens=17, seed=5)
    a = analyze_model(model, inputs, layers=[-1], channels=[2, 0])
    emb = model.backbone.embedding(inputs.ids[None])[0].double().norm(dim=-1)
    torch.testing.assert_close(a.dynamics.embedding_norms, emb.detach(), rtol=1e-6, atol=0)
    assert a.dynamics.token_norms.shape == (3, 17)
    assert a.dynamics.scan_input_norms.shape == (3, 17)
    assert [(x["layer"], x["channel"]) for x in a.attention] == [(2, 2), (2, 0)]
    assert all(x["P"].shape == (17, 17) for x in a.attention)
    data = a.to_json()
    assert [r["index"] for r in data["layers"]] == [0, 1, 2]
    assert len(data["token_norms"]) == 3 and len(data["token_norms"][0]) == 17
    with pytest.raises(DataError, match="layer 3 does not exist"):
        analyze_model(model, inputs, layers=[3])


def test_random_input_is_seeded_and_in_range():
    a = choose_input(None, 7, max_tokens=500, seed=3)
    b = choose_input(None, 7, max_tokens=500, seed=3)
    assert a.source == "random" and torch.equal(a.ids, b.ids)
    assert int(a.ids.min()) == 0 and int(a.ids.max()) == 6
    assert not torch.equal(a.ids, choose_input(None, 7, max_tokens=500, seed=4).ids)


def test_tokenizer_outside_vocabulary(model, tmp_path):
    """A tokenizer with more words than the model's vocabulary is refused with a clear error."""
    if shutil.which("bible") is None:
        pytest.skip("needs the bible program (bible-kjv)")
    from tokenizers import Tokenizer, models, pre_tokenizers

    from tokendyn.data import text as td

    words = dict.fromkeys(td.bible_text(max_chars=3000).split())       # far more than 40 words
    tok = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}},
                                     unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    inputs = choose_input(tmp_path, 40, max_tokens=200)
    assert inputs.source == "builtin-corpus"
    with pytest.raises(DataError, match="outside the model's vocabulary"):
        analyze_model(model, inputs)


def test_not_a_mamba_model():
    net = torch.nn.Sequential(torch.nn.Linear(3, 3))
    with pytest.raises(CheckpointError, match="not a Mamba"):
        model_spectra(net)


@pytest.mark.gpu
def test_cuda_matches_cpu(model, tmp_path):
    """The same analysis on a CUDA device: same signatures, norms and attention (float32 model)."""
    from tokendyn.analysis.analyze import write_analysis

    inputs = choose_input(None, 40, max_tokens=64, seed=2)
    cpu = analyze_model(model, inputs, layers=[0, 2], channels=[0, 5])
    gpu_model = MambaLM(model.config).cuda().eval()
    gpu_model.load_state_dict(model.state_dict())
    gpu = analyze_model(gpu_model, inputs, layers=[0, 2], channels=[0, 5])
    for a, b in zip(cpu.spectra, gpu.spectra):
        assert (a.positive, a.negative, a.zero) == (b.positive, b.negative, b.zero)
        torch.testing.assert_close(a.sym_eigvals, b.sym_eigvals, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(cpu.dynamics.token_norms, gpu.dynamics.token_norms, rtol=1e-3, atol=1e-5)
    for a, b in zip(cpu.attention, gpu.attention):
        torch.testing.assert_close(a["P"], b["P"], rtol=1e-3, atol=1e-6)
    paths = write_analysis(gpu, tmp_path)
    assert paths["html"].is_file()
