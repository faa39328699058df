"""Token reordering inside the model: the reordering mixer against a float64 oracle written
from THEORY.md section 6, layer selection, save / load / info / analyze, and refusals."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from train_helpers import run_cli

from tokendyn.errors import CheckpointError, ConfigError
from tokendyn.model import ClassifierConfig, MambaClassifier, MambaConfig, load_model
from tokendyn.ops.reference import selective_scan_reference

f64 = torch.float64


def clf_config(**kw):
    base = dict(input_dim=5, n_classes=3, d_model=8, n_layer=2, d_state=4, scan_backend="chunked")
    base.update(kw)
    return ClassifierConfig(**base)


def oracle_mixer(m, h, mode, branches, tau=1.0, power=1.0):
    """The reordering mixer written out: conv, scores, sort, Δ/B/C from the sorted tokens,
    reference scan with gate, back to the original order, out_proj. h: (b, L, d_model)."""
    L = h.shape[1]
    xz = h @ m.in_proj.weight.T
    x, z = xz.transpose(1, 2).chunk(2, dim=1)                                   # (b, D, L)
    x = F.silu(F.conv1d(x, m.conv1d.weight, m.conv1d.bias, padding=m.d_conv - 1, groups=m.d_inner)[..., :L])
    W = m.x_proj.weight
    R, N = m.dt_rank, m.d_state
    S_delta = m.dt_proj.weight @ W[:R]
    s = torch.einsum("d,bdl->bl", m.importance_weight, torch.einsum("ed,bdl->bel", S_delta, x)
                     + m.dt_proj.bias[:, None])
    if mode == "hard":
        perm = torch.argsort(s, dim=-1, stable=True)
        take = [torch.stack([t[b][:, perm[b]] for b in range(t.shape[0])]) for t in (x, z)]
        xs, zs = take[0], (take[1] if branches == "xz" else z)
    else:
        s_sorted = torch.sort(s, dim=-1).values
        P = torch.softmax(-(s_sorted[:, :, None] - s[:, None, :]).abs() ** power / tau, dim=-1)
        xs = torch.einsum("bij,bdj->bdi", P, x)
        zs = torch.einsum("bij,bdj->bdi", P, z) if branches == "xz" else z
    dt = torch.einsum("ed,bdl->bel", S_delta, xs)
    B = torch.einsum("nd,bdl->bnl", W[R:R + N], xs)
    C = torch.einsum("nd,bdl->bnl", W[R + N:], xs)
    y = selective_scan_reference(xs, dt, -torch.exp(m.A_log), B, C, m.D, z=zs, delta_bias=m.dt_proj.bias,
                                 delta_softplus=True)
    if mode == "hard":
        back = torch.empty_like(y)
        for b in range(y.shape[0]):
            back[b][:, perm[b]] = y[b]
    else:
        Pn = P / P.sum(dim=1, keepdim=True)
        back = torch.einsum("bij,bdi->bdj", Pn, y)
    return back.transpose(1, 2) @ m.out_proj.weight.T


@pytest.mark.parametrize("mode,branches", [("hard", "xz"), ("soft", "xz"), ("soft", "x"), ("hard", "x")])
@pytest.mark.parametrize("seed", range(2))
def test_reordering_mixer_matches_the_oracle(mode, branches, seed):
    torch.manual_seed(seed)
    model = MambaClassifier(clf_config(reorder=mode, reorder_branches=branches, reorder_tau=0.7)).double()
    mixer = model.backbone.layers[0].mixer
    with torch.no_grad():
        for p in mixer.parameters():              # away from the init's structure
            p.add_(0.1 * torch.randn_like(p))
    h = torch.randn(2, 11, 8, dtype=f64)
    for backend in ("reference", "chunked"):
        mixer.scan_backend = backend
        torch.testing.assert_close(mixer(h), oracle_mixer(mixer, h, mode, branches, tau=0.7),
                                   rtol=1e-9, atol=1e-10)
    # gradients. soft: all of them equal the oracle's autograd. hard: the oracle's argsort has
    # no gradient, the model's scores a straight-through one, so compare what lies after the
    # scores (A, D, out_proj, the B and C rows of x_proj); k's gradient must exist
    h1 = h.clone().requires_grad_(True)
    h2 = h.clone().requires_grad_(True)
    g = torch.randn(2, 11, 8, dtype=f64)
    (mixer(h1) * g).sum().backward()
    grads = {n: p.grad.clone() for n, p in mixer.named_parameters()}
    mixer.zero_grad()
    (oracle_mixer(mixer, h2, mode, branches, tau=0.7) * g).sum().backward()
    ref = {n: p.grad for n, p in mixer.named_parameters()}
    assert torch.isfinite(grads["importance_weight"]).all() and grads["importance_weight"].abs().sum() > 0
    R = mixer.dt_rank
    after = ["A_log", "D", "out_proj.weight"]
    for n in after:
        torch.testing.assert_close(grads[n], ref[n], rtol=1e-8, atol=1e-10, msg=n)
    torch.testing.assert_close(grads["x_proj.weight"][R:], ref["x_proj.weight"][R:], rtol=1e-8, atol=1e-10)
    if mode == "soft":
        torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-8, atol=1e-10)
        for n in grads:
            torch.testing.assert_close(grads[n], ref[n], rtol=1e-8, atol=1e-10, msg=n)


def test_layers_and_composition():
    model = MambaClassifier(clf_config(n_layer=3, reorder="hard", reorder_layers=[1, 2], io_constraint="positive"))
    names = set(model.state_dict())
    assert "backbone.layers.0.mixer.importance_weight" not in names
    assert {"backbone.layers.1.mixer.importance_weight", "backbone.layers.2.mixer.importance_weight",
            "backbone.layers.1.mixer.io_factor.theta"} <= names
    none = MambaClassifier(clf_config())
    assert not any("importance" in n for n in none.state_dict())


def test_reordering_model_saves_loads_and_analyses(tmp_path, capsys):
    torch.manual_seed(3)
    cfg = clf_config(input_dim=16, patch_size=4, n_positions=49, bidirectional=True, reorder="soft",
                     reorder_tau=0.5, reorder_layers=[0, 1])
    model = MambaClassifier(cfg).eval()
    model.save(tmp_path / "m")
    again = load_model(tmp_path / "m")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
    assert type(again.backbone.layers[0].mixer) is type(model.backbone.layers[0].mixer)
    code, err = run_cli(["info", tmp_path / "m", "--json", tmp_path / "info.json"], capsys)
    assert code == 0, err
    info = json.loads((tmp_path / "info.json").read_text())
    reorder = info["config"]["variants"]["reorder"]
    assert reorder["reorder"] == "soft" and reorder["reorder_layers"] == [0, 1] and info["variants"] == ["reorder"]
    code, err = run_cli(["analyze", tmp_path / "m", "--out", tmp_path / "an", "--max-tokens", "49"], capsys)
    assert code == 0, err
    an = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert an["input"]["n_tokens"] == 49 and len(an["layers"]) == 2
    assert an["config"]["reorder"] == "soft" and an["config"]["reorder_layers"] == [0, 1]
    code, err = run_cli(["analyze", tmp_path / "m", "--out", tmp_path / "an2", "--text", tmp_path / "info.json"],
                        capsys)
    assert code == 2 and "takes no text" in err and err.count("\n") == 1


def test_causal_model_refuses_reordering(tmp_path):
    with pytest.raises(ConfigError, match="causal language model"):
        MambaConfig(d_model=8, n_layer=1, vocab_size=10, reorder="hard")
    with pytest.raises(ConfigError, match="causal language model"):
        MambaConfig.from_dict({"d_model": 8, "n_layer": 1, "vocab_size": 10, "reorder": "soft"})
    from tokendyn.model import MambaLM

    MambaLM(MambaConfig(d_model=8, n_layer=1, vocab_size=10)).save(tmp_path / "lm")
    cfg = json.loads((tmp_path / "lm" / "config.json").read_text())
    cfg["reorder"] = "soft"
    (tmp_path / "lm" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="causal language model"):
        load_model(tmp_path / "lm")


def test_no_step_and_no_plain_export():
    model = MambaClassifier(clf_config(reorder="hard"))
    mixer = model.backbone.layers[0].mixer
    conv, ssm = mixer.allocate_state(1)
    with pytest.raises(ConfigError, match="no one-token step"):
        mixer.step(torch.zeros(1, 8), conv, ssm)
    with pytest.raises(ConfigError, match="no one-token step"):
        mixer.step_(torch.zeros(1, 8), conv, ssm)
    with pytest.raises(CheckpointError, match="no plain mixer computes the sort"):
        mixer.plain_state_dict()


@pytest.mark.parametrize("bad,match", [
    ({"reorder": "random"}, "unknown reorder mode"), ({"reorder": "soft", "reorder_tau": 0}, "reorder_tau"),
    ({"reorder_power": -2.0}, "reorder_power"), ({"reorder_layers": [2]}, "reorder_layers"),
    ({"reorder_layers": "0"}, "reorder_layers"), ({"reorder": "hard", "reorder_layers": []}, "at least one layer"),
])
def test_bad_reorder_config(bad, match):
    with pytest.raises(ConfigError, match=match):
        clf_config(**bad)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_reordering_classifier_on_cuda_under_autocast(mode):
    torch.manual_seed(0)
    model = MambaClassifier(clf_config(input_dim=16, patch_size=4, n_positions=49, bidirectional=True,
                                       reorder=mode, scan_backend="auto")).cuda()
    x = torch.randn(4, 1, 28, 28, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x)
    logits.float().sum().backward()
    k = model.backbone.layers[0].mixer.importance_weight.grad
    assert torch.isfinite(logits).all() and torch.isfinite(k).all() and k.abs().sum() > 0
    ref = MambaClassifier(dataclasses.replace(model.config)).double()
    ref.load_state_dict(model.state_dict())
    ref.set_scan_backend("chunked")
    with torch.no_grad():
        torch.testing.assert_close(model(x).double().cpu(), ref(x.double().cpu()), rtol=2e-3, atol=2e-3)
