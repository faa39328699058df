"""Refinement 1: the sign-constrained S_Cᵀ S_B (THEORY.md section 5) as a model option."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tokendyn.analysis.layers import model_spectra
from tokendyn.cli import app, main
from tokendyn.errors import ConfigError
from tokendyn.model import (
    ClassifierConfig,
    MambaClassifier,
    MambaConfig,
    MambaLM,
    MambaMixer,
    load_model,
)
from tokendyn.model.checkpoint import export_hf
from tokendyn.model.io_constraint import IOFactor, io_signs

SETTINGS = ("positive", "negative", "mixed")
STATES = (1, 3, 5, 16)


def expected_signature(setting: str, n: int) -> tuple[int, int]:
    """(positive, negative) nonzero eigenvalues of S_Cᵀ S_B the setting prescribes."""
    mixed = (n // 2, n - n // 2)          # the authors' order: ⌊N/2⌋ positive first
    return {"positive": (n, 0), "negative": (0, n), "mixed": mixed, "mixed_margin": mixed}[setting]


def signatures(model) -> list[tuple[int, int, int]]:
    return [(s.positive, s.negative, s.zero) for s in model_spectra(model)]


def small(setting: str, n: int, **kw) -> MambaConfig:
    # d_inner = 16, so N = 16 is the edge case N = D
    return MambaConfig(d_model=8, n_layer=2, vocab_size=256, d_state=n, io_constraint=setting, **kw)


@pytest.mark.parametrize("n", STATES)
@pytest.mark.parametrize("setting", SETTINGS)
def test_signature_at_initialisation(setting, n):
    torch.manual_seed(n)
    model = MambaLM(small(setting, n))
    p, q = expected_signature(setting, n)
    assert signatures(model) == [(p, q, 16 - n)] * 2


def test_signs_of_lambda():
    assert io_signs("mixed", 5).tolist() == [1, 1, -1, -1, -1]
    assert io_signs("mixed", 4).tolist() == [1, 1, -1, -1]
    assert io_signs("mixed_margin", 5).tolist() == [1, 1, -1, -1, -1]
    assert io_signs("negative", 3).tolist() == [-1, -1, -1]


@pytest.mark.parametrize("constraint,eps", [("mixed", 0.0), ("mixed_margin", 0.3)])
@pytest.mark.parametrize("n,d", [(1, 1), (1, 4), (3, 3), (4, 9), (6, 7)])
def test_factor_is_the_construction(n, d, constraint, eps):
    """S_C = U with U upper-triangular, unit diagonal, the free entries where the parameters
    say; S_B = diag(λ) S_C with λ_i = s_i (softplus(θ_i) + ε); checked entry by entry in float64.
    The authors' mixed has no ε whatever the margin asked for; mixed_margin has it."""
    f = IOFactor(n, d, constraint, 0.3).double()
    g = torch.Generator().manual_seed(n * 10 + d)
    with torch.no_grad():
        for p in f.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    with torch.no_grad():
        S_B, S_C = f()
    k = 0
    for i in range(n):
        for j in range(d):
            if j < i:
                want = 0.0
            elif j == i:
                want = 1.0
            elif j < n:
                want, k = float(f.U_upper.detach()[k]), k + 1
            else:
                want = float(f.U_right.detach()[i, j - n])
            assert float(S_C[i, j]) == want
    sign = torch.tensor([1.0] * (n // 2) + [-1.0] * (n - n // 2), dtype=torch.float64)
    lam = sign * (torch.log1p(torch.exp(f.theta)) + eps)
    torch.testing.assert_close(S_B, lam[:, None] * S_C, rtol=1e-12, atol=0)


def test_factor_gradients_float64():
    f = IOFactor(4, 7, "mixed", 0.7).double()
    with torch.no_grad():
        for p in f.parameters():
            p.normal_()
    params = tuple(f.parameters())

    def fn(*ps):
        return torch.func.functional_call(f, dict(zip([n for n, _ in f.named_parameters()], ps)), ())

    assert torch.autograd.gradcheck(fn, params)


def _perturbed(model, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.mark.parametrize("setting", SETTINGS)
def test_mixer_equals_plain_mixer_with_effective_weight(setting):
    """The constrained mixer computes what a plain Mamba-1 mixer with x_proj = the effective
    weight computes (float64, forward and the input gradient)."""
    torch.manual_seed(0)
    cfg = small(setting, 5)
    model = _perturbed(MambaLM(cfg).double())
    mixer = model.backbone.layers[0].mixer
    plain = MambaMixer(dataclasses.replace(cfg, io_constraint="none")).double()
    plain.load_state_dict(mixer.plain_state_dict())
    x = torch.randn(2, 11, 8, dtype=torch.float64, requires_grad=True)
    out = mixer(x)
    ref = plain(x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    (g1,) = torch.autograd.grad(out.square().sum(), x)
    (g2,) = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


def _bible_batches(n_batches: int, batch: int, length: int) -> torch.Tensor:
    """(n_batches, batch, length + 1) byte tokens: consecutive pieces of the first verses."""
    from tokendyn.data.text import bible_text, byte_tokens

    need = n_batches * batch * (length + 1)
    ids = byte_tokens(bible_text(max_chars=need))[:need]
    return ids.view(n_batches, batch, length + 1)


@pytest.mark.parametrize("setting,n", [("positive", 3), ("positive", 16), ("negative", 1), ("negative", 5),
                                       ("mixed", 5), ("mixed", 16)])
def test_signature_after_training(setting, n):
    """50 AdamW steps on Bible text, with a learning rate that moves S_B and S_C by more than
    half their norm, keep the prescribed signature in every layer; every constrained
    parameter gets a gradient."""
    torch.manual_seed(1)
    model = MambaLM(small(setting, n, scan_backend="chunked"))
    mixers = [layer.mixer for layer in model.backbone.layers]
    io_before = [m.io_parameters() for m in mixers]
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.0)
    losses = []
    for step, batch in enumerate(_bible_batches(50, 4, 32)):
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        if step == 0:
            for name, p in model.named_parameters():
                if "io_factor" in name and p.numel():
                    assert p.grad is not None and p.grad.abs().sum() > 0, name
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < sum(losses[:5])  # it trained
    for m, before in zip(mixers, io_before):
        after = m.io_parameters()
        for key in ("S_B", "S_C"):
            moved = (after[key] - before[key]).norm() / before[key].norm()
            assert moved > 0.5, (key, float(moved))
        assert m.io_factor.theta.detach().abs().mean() > 0.1      # θ starts at 0
    p, q = expected_signature(setting, n)
    assert signatures(model) == [(p, q, 16 - n)] * 2


@pytest.mark.parametrize("setting", SETTINGS)
def test_step_by_step_equals_full_forward(setting):
    torch.manual_seed(2)
    model = _perturbed(MambaLM(small(setting, 3)).double()).eval()
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2)
        steps = torch.stack([model.step(ids[:, t], cache) for t in range(ids.shape[1])], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("setting", ("none",) + SETTINGS)
def test_save_load_round_trip(setting, tmp_path):
    torch.manual_seed(3)
    model = _perturbed(MambaLM(small(setting, 5))).eval()
    model.save(tmp_path / "m")
    raw = json.loads((tmp_path / "m" / "config.json").read_text())
    assert raw["kind"] == "lm" and raw["format_version"] == 3 and raw["layer"] == "mamba1"
    assert raw["variants"]["io_constraint"] == {"io_constraint": setting, "io_margin": 0.7}
    again = load_model(tmp_path / "m")
    assert type(again.backbone.layers[1].mixer) is type(model.backbone.layers[1].mixer)
    assert again.config == model.config
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        assert torch.equal(again(ids), model(ids))


def test_classifier_with_constraint_round_trips(tmp_path):
    torch.manual_seed(4)
    cfg = ClassifierConfig(input_dim=3, n_classes=2, d_model=8, n_layer=2, d_state=3, io_constraint="negative")
    model = MambaClassifier(cfg).eval()
    assert signatures(model) == [(0, 3, 13)] * 2
    model.save(tmp_path / "c")
    again = load_model(tmp_path / "c")
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


@pytest.mark.parametrize("kw,fragment", [
    (dict(io_constraint="sideways"), "unknown io_constraint"),
    (dict(io_constraint="positive", io_margin=0.0), "io_margin"),
    (dict(io_constraint="positive", io_margin=-1.0), "io_margin"),
    (dict(io_constraint="positive", io_margin=float("nan")), "io_margin"),
    (dict(io_constraint="mixed", d_state=17), "d_state <= d_inner"),
    (dict(layer="mamba7"), "unknown layer"),
])
def test_bad_settings_raise_config_error(kw, fragment):
    base = dict(d_model=8, n_layer=1, vocab_size=10)
    with pytest.raises(ConfigError, match=fragment) as exc:
        MambaConfig(**{**base, **kw})
    assert str(exc.value).count(". ") == 0 and str(exc.value).endswith(".")
    with pytest.raises(ConfigError, match=fragment):
        ClassifierConfig(input_dim=2, n_classes=2, d_model=8, n_layer=1, **kw)


def test_d_state_above_d_inner_is_fine_without_constraint():
    MambaConfig(d_model=8, n_layer=1, vocab_size=10, d_state=17)


@pytest.mark.parametrize("command", ["info", "analyze"])
def test_cli_refuses_a_checkpoint_with_a_bad_setting(tmp_path, command, capsys):
    torch.manual_seed(5)
    MambaLM(small("positive", 3)).save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["io_constraint"] = "sideways"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit) as exc:
        main([command, str(tmp_path / "m"), *(["--out", str(tmp_path / "a")] if command == "analyze" else [])])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tokendyn: error:") and "io_constraint" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "a").exists()


def test_info_and_analyze_on_a_constrained_checkpoint(tmp_path):
    torch.manual_seed(6)
    model = MambaLM(small("mixed", 5))
    model.save(tmp_path / "m")
    runner = CliRunner()
    res = runner.invoke(app, ["info", str(tmp_path / "m"), "--json", str(tmp_path / "info.json")])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "info.json").read_text())
    assert data["kind"] == "lm" and data["config"]["variants"]["io_constraint"]["io_constraint"] == "mixed"
    assert data["family"] == "mamba1" and data["variants"] == ["io_constraint"]
    assert data["n_params"] == model.num_parameters()
    res = runner.invoke(app, ["analyze", str(tmp_path / "m"), "--out", str(tmp_path / "a"), "--max-tokens", "64"])
    assert res.exit_code == 0, res.output
    layers = json.loads((tmp_path / "a" / "analysis.json").read_text())["layers"]
    assert [(r["io_eigs_positive"], r["io_eigs_negative"]) for r in layers] == [(2, 3)] * 2


@pytest.mark.parametrize("setting", SETTINGS)
def test_hf_export_gives_transformers_the_same_logits(setting, tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(7)
    cfg = MambaConfig(d_model=16, n_layer=2, vocab_size=40, d_state=5, io_constraint=setting)
    model = _perturbed(MambaLM(cfg)).eval()
    export_hf(model, tmp_path / "hf")
    hf = transformers.MambaForCausalLM.from_pretrained(tmp_path / "hf", use_mambapy=False).eval()
    x = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    assert (ours - theirs).abs().max().item() <= 1e-4
    back = load_model(tmp_path / "hf")     # an unconstrained model computing the same function
    assert back.config.io_constraint == "none"
    with torch.no_grad():
        assert (back(x) - ours).abs().max().item() <= 1e-5
    p, q = expected_signature(setting, 5)
    assert [(s.positive, s.negative) for s in model_spectra(back)] == [(p, q)] * 2


@pytest.mark.parametrize("r,n,d", [(1, 1, 1), (2, 1, 5), (3, 3, 3), (2, 4, 9), (5, 6, 7)])
@pytest.mark.parametrize("setting", SETTINGS)
def test_fast_effective_weight_equals_the_plain_path(r, n, d, setting):
    """effective_weight (one node, hand-written backward) against IOFactor.forward + cat
    (plain autograd) on fresh random parameters in float64: values, gradients, gradcheck."""
    from tokendyn.model.io_constraint import effective_weight

    g = torch.Generator().manual_seed(r * 100 + n * 10 + d)
    f = IOFactor(n, d, setting, 0.4).double()
    with torch.no_grad():
        for p in f.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    dt = torch.randn(r, d, generator=g, dtype=torch.float64, requires_grad=True)
    fast = effective_weight(dt, f)
    plain = torch.cat([dt, *f()], dim=0)
    torch.testing.assert_close(fast, plain, rtol=1e-14, atol=1e-14)
    w = torch.randn(fast.shape, generator=g, dtype=torch.float64)
    inputs = [dt, *f.parameters()]
    for a, b in zip(torch.autograd.grad((fast * w).sum(), inputs), torch.autograd.grad((plain * w).sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    names = [k for k, _ in f.named_parameters()]

    def fn(dt_, *ps):
        return effective_weight(dt_, _WithParams(f, dict(zip(names, ps))))

    assert torch.autograd.gradcheck(fn, tuple(inputs))


class _WithParams:
    """An IOFactor's buffers with other parameter tensors (for gradcheck)."""

    def __init__(self, factor, params):
        self.__dict__.update(params)
        self.signs, self.upper_flat, self.margin = factor.signs, factor.upper_flat, factor.margin


def test_lower_precision_and_autocast(tmp_path):
    """A constrained checkpoint loads in bfloat16 and runs under autocast. (The signature is not
    checked in bfloat16: rounding S_B = diag(λ) U and S_C = U separately breaks the exact symmetry
    of M, and the analyser's zero tolerance counts the rounding's eigenvalues; docs/models.md.)"""
    torch.manual_seed(9)
    model = MambaLM(small("mixed", 5))
    model.save(tmp_path / "m")
    half = load_model(tmp_path / "m", dtype="bfloat16")
    ids = torch.randint(0, 256, (2, 6))
    with torch.no_grad():
        ref = model(ids)
        low = half(ids).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model(ids).float()
    assert torch.isfinite(low).all() and torch.isfinite(auto).all()
    assert (low - ref).abs().max() < 0.1 * ref.abs().max() and (auto - ref).abs().max() < 0.1 * ref.abs().max()
    assert signatures(load_model(tmp_path / "m")) == [(2, 3, 11)] * 2


# mamba_ssm 2.x MambaConfig fields and Mamba(...) keyword arguments (from its source), for the export
_MAMBA_SSM_CONFIG = {"d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx", "attn_cfg",
                     "rms_norm", "residual_in_fp32", "fused_add_norm", "pad_vocab_size_multiple", "tie_embeddings"}
_MAMBA_SSM_MIXER = {"d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale",
                    "dt_init_floor", "dt_limit", "conv_bias", "bias", "use_fast_path", "layer_idx", "device", "dtype"}


@pytest.mark.parametrize("setting,tie", [("none", True), ("positive", False), ("mixed", True)])
def test_state_spaces_export_round_trips(setting, tie, tmp_path):
    """export_state_spaces writes mamba_ssm's config fields and full state dict; reading it back
    (as a state-spaces checkpoint) gives an unconstrained model with the same logits."""
    from tokendyn.model.checkpoint import export_state_spaces

    torch.manual_seed(10)
    cfg = MambaConfig(d_model=16, n_layer=2, vocab_size=37, d_state=4, io_constraint=setting, tie_embeddings=tie,
                      dt_rank=3, conv_bias=False)
    model = _perturbed(MambaLM(cfg)).eval()
    export_state_spaces(model, tmp_path / "ss")
    raw = json.loads((tmp_path / "ss" / "config.json").read_text())
    assert set(raw) <= _MAMBA_SSM_CONFIG and set(raw["ssm_cfg"]) <= _MAMBA_SSM_MIXER
    stored = torch.load(tmp_path / "ss" / "pytorch_model.bin", weights_only=True)
    assert "lm_head.weight" in stored and not any("io_factor" in k for k in stored)
    assert stored["backbone.layers.0.mixer.x_proj.weight"].shape == (3 + 2 * 4, 32)
    back = load_model(tmp_path / "ss")
    assert back.checkpoint_layout == "state-spaces" and back.config.io_constraint == "none"
    assert dataclasses.replace(back.config, io_constraint=setting) == dataclasses.replace(cfg, scan_backend="auto")
    x = torch.randint(0, 37, (2, 9))
    with torch.no_grad():
        assert (back(x) - model(x)).abs().max().item() <= 1e-5


def test_state_spaces_export_refuses_what_mamba_ssm_cannot_hold(tmp_path):
    from tokendyn.errors import CheckpointError
    from tokendyn.model.checkpoint import export_state_spaces

    with pytest.raises(CheckpointError, match="norm epsilon"):
        export_state_spaces(MambaLM(MambaConfig(d_model=8, n_layer=1, vocab_size=9, norm_epsilon=1e-6)), tmp_path / "a")
    with pytest.raises(CheckpointError, match="language model"):
        export_state_spaces(MambaClassifier(ClassifierConfig(input_dim=2, n_classes=2, d_model=8, n_layer=1)),
                            tmp_path / "b")


@settings(max_examples=40, deadline=None)
@given(d=st.integers(1, 40), data=st.data(), setting=st.sampled_from(SETTINGS),
       margin=st.floats(0.01, 3.0), scale=st.floats(0.1, 2.0), seed=st.integers(0, 2**31 - 1))
def test_signature_for_any_parameters(d, data, setting, margin, scale, seed):
    """Whatever values the free parameters take, S_Cᵀ S_B has the prescribed signature: random
    N ≤ D, ε and parameter scales up to 2. The N eigenvalues of largest magnitude carry the
    prescribed signs and the other D − N are zero. Random U can be so badly conditioned that
    the smallest prescribed eigenvalue falls under eigen_signature's counting tolerance
    (docs/models.md; e.g. N = D = 11 at scale 2): the counts are compared only where it does not."""
    from tokendyn.dynamics.spectrum import eigen_signature, symmetric_io_eigvals
    from tokendyn.model.io_constraint import effective_weight

    n = data.draw(st.integers(1, min(d, 12)))
    f = IOFactor(n, d, setting, margin).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in f.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64))
        S_B, S_C = effective_weight(torch.zeros(0, d, dtype=torch.float64), f).split(n)
    ev = symmetric_io_eigvals(S_B, S_C)
    by_size = ev[ev.abs().argsort(descending=True)]
    top, rest = by_size[:n], by_size[n:]
    assert top.abs().min() > 0
    assert (int((top > 0).sum()), int((top < 0).sum())) == expected_signature(setting, n)
    rtol = 1e-8
    assert rest.numel() == 0 or rest.abs().max() <= rtol * by_size[0].abs()
    if top.abs().min() > rtol * by_size[0].abs():
        sig = eigen_signature(S_B, S_C, rtol=rtol)
        assert (sig.positive, sig.negative, sig.zero) == (*expected_signature(setting, n), d - n)


def test_one_decay_rule_for_every_setting():
    """Every parameter that builds S_B and S_C decays in every setting (x_proj's matrix when
    unconstrained; U and θ when constrained), under either rule; "all" decays every parameter."""
    from tokendyn.train.loop import param_groups

    for setting in ("none", "positive", "mixed", "mixed_margin"):
        model = MambaLM(small(setting, 4))
        decayed = {id(p) for p in param_groups(model, 0.1)[0]["params"]}
        for name, p in model.named_parameters():
            if "io_factor" in name or "x_proj" in name:
                assert id(p) in decayed, (setting, name)
            if name.endswith(("A_log", "mixer.D", "norm.weight")):
                assert id(p) not in decayed, (setting, name)
        groups = param_groups(model, 0.25, "all")
        assert not groups[1]["params"] and len(groups[0]["params"]) == len(list(model.parameters()))


def test_final_dropout_acts_in_training_only():
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=8, n_layer=1, vocab_size=32, final_dropout=0.3))
    ids = torch.randint(0, 32, (2, 5))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids), model(ids))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(ids), model(ids))
    with pytest.raises(ConfigError):
        MambaConfig(d_model=8, n_layer=1, vocab_size=32, final_dropout=1.0)
