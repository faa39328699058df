"""The MambaVision-style family and the authors' reordering block (THEORY.md section 6): the block
against a reference written out by hand on a tiny input, the identity ordering, SoftSort at τ → 0,
the gradient of k, the hybrid classifier, checkpoints, and refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from train_helpers import run_cli

from tokendyn.errors import CheckpointError, ConfigError
from tokendyn.model import ClassifierConfig, HybridClassifier, HybridConfig, MambaClassifier, MambaConfig, load_model
from tokendyn.model.families import build_mixer
from tokendyn.model.hybrid import stage_first_layers
from tokendyn.model.mambavision import MambaVisionMixer, same_conv_silu
from tokendyn.model.reorder_mixer import recorded_orders

f64 = torch.float64
AUTHORS = dict(reorder="soft", reorder_branches="x", reorder_restore=False)


def mixer(d_model=4, seed=0, **options):
    """A float64 MambaVision mixer of layer 0 (a reordering one with the reorder options)."""
    config = ClassifierConfig(input_dim=2, n_classes=2, d_model=d_model, n_layer=1, layer="mambavision",
                              d_state=2, scan_backend="reference", **options)
    torch.manual_seed(seed)
    return build_mixer(config, 0).to(f64)


def hand_reference(m, h, tau=1.0):
    """The authors' block written out with loops, one sequence: h (L, d_model) -> (L, d_model).

    in_proj, each branch's centred depthwise conv + SiLU, s_l = kᵀ(S_Δ x_l + b_Δ), SoftSort
    P̂_ij = exp(−|s_(i) − s_j|/τ) / Σ_j' (...), x'_i = Σ_j P̂_ij x_j, Δ/B/C from x', the recurrence
    h_i = exp(Δ_i A) h_{i−1} + Δ_i B_i x'_i, y_i = C_i·h_i + D x'_i, out_i = W_out [y_i; z_i] (no restore).
    """
    L = h.shape[0]
    D, N, R, k = m.d_inner, m.d_state, m.dt_rank, m.d_conv
    xz = h @ m.in_proj.weight.T
    pre = {"x": xz[:, :D], "z": xz[:, D:]}
    conv = {}
    for name, c in (("x", m.conv1d_x), ("z", m.conv1d_z)):
        out = torch.zeros(L, D, dtype=f64)
        left = (k - 1) // 2                       # "same": (k−1)//2 taps before the token
        for t in range(L):
            for d in range(D):
                acc = c.bias[d]
                for j in range(k):
                    src = t + j - left
                    if 0 <= src < L:
                        acc = acc + c.weight[d, 0, j] * pre[name][src, d]
                out[t, d] = acc * torch.sigmoid(acc)
        conv[name] = out
    x, z = conv["x"], conv["z"]
    W = m.x_proj.weight
    S_delta, S_B, S_C = m.dt_proj.weight @ W[:R], W[R:R + N], W[R + N:]
    b = m.dt_proj.bias
    s = torch.stack([m.importance_weight @ (S_delta @ x[t] + b) for t in range(L)])
    ranked = sorted(s.tolist())
    P = torch.zeros(L, L, dtype=f64)
    for i in range(L):
        w = torch.stack([torch.exp(-abs(ranked[i] - s[j]) / tau) for j in range(L)])
        P[i] = w / w.sum()
    xs = P @ x
    A = -torch.exp(m.A_log)
    state = torch.zeros(D, N, dtype=f64)
    ys = []
    for i in range(L):
        delta = F.softplus(S_delta @ xs[i] + b)                                   # (D,)
        state = torch.exp(delta[:, None] * A) * state + delta[:, None] * (S_B @ xs[i])[None, :] * xs[i][:, None]
        ys.append(state @ (S_C @ xs[i]) + m.D * xs[i])
    y = torch.stack(ys)                                                            # (L, D), sorted order
    return torch.cat([y, z], dim=1) @ m.out_proj.weight.T


def test_authors_block_equals_a_hand_written_reference():
    m = mixer(**AUTHORS)
    with torch.no_grad():
        m.importance_weight.mul_(30.0)               # scores spread out, so P̂ is far from uniform
        h = torch.randn(1, 5, 4, dtype=f64, generator=torch.Generator().manual_seed(1))
        out = m(h)
        ref = hand_reference(m, h[0])
    torch.testing.assert_close(out[0], ref, rtol=1e-10, atol=1e-12)
    # no restore: the output is not the restored one (the sorted order reaches out_proj)
    restored = mixer(reorder="soft", reorder_branches="x", reorder_restore=True)
    restored.load_state_dict(m.state_dict())
    with torch.no_grad():
        assert not torch.allclose(restored(h), out)


@pytest.mark.parametrize("restore", [False, True])
@pytest.mark.parametrize("branches", ["x", "xz"])
def test_identity_ordering_gives_the_plain_block(restore, branches):
    """Equal scores (k = 0): the stable exact sort keeps the order, and the reordering block is
    the plain MambaVision block, with or without a restore."""
    plain = mixer()
    m = mixer(reorder="hard", reorder_branches=branches, reorder_restore=restore)
    assert type(plain) is MambaVisionMixer and type(m) is not MambaVisionMixer
    m.load_state_dict({**plain.state_dict(), "importance_weight": torch.zeros(m.d_inner, dtype=f64)})
    h = torch.randn(2, 7, 4, dtype=f64)
    with torch.no_grad():
        torch.testing.assert_close(m(h), plain(h), rtol=1e-12, atol=1e-12)


def test_softsort_at_small_tau_equals_the_exact_sort_in_the_block():
    hard = mixer(reorder="hard", reorder_branches="x", reorder_restore=False)
    soft = mixer(reorder="soft", reorder_branches="x", reorder_restore=False, reorder_tau=1e-6)
    soft.load_state_dict(hard.state_dict())
    h = torch.randn(2, 9, 4, dtype=f64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hard.importance_weight.mul_(100.0)
        soft.importance_weight.copy_(hard.importance_weight)
        x = same_conv_silu(hard.in_proj(h)[..., :hard.d_inner].transpose(1, 2), hard.conv1d_x)
        gaps = torch.sort(hard.importance(x), -1).values.diff()
        assert gaps.min() > 1e-4          # every weight off the permutation is below exp(−100)
        torch.testing.assert_close(soft(h), hard(h), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_gradients_reach_the_importance_direction(mode):
    m = mixer(reorder=mode, reorder_branches="x", reorder_restore=False)
    h = torch.randn(2, 6, 4, dtype=f64, requires_grad=True)
    (m(h) ** 2).sum().backward()
    g = m.importance_weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_hybrid_classifier_shapes_layers_and_round_trip(tmp_path, capsys):
    config = HybridConfig(in_channels=1, n_classes=10, dims=[4, 8, 8], depths=[1, 3, 2], strides=[1, 2],
                          attention=True, n_heads=2, reorder_layers=[0, 2], **AUTHORS)
    # Mamba blocks: stage 1 has 3 − 1 (one attention block), stage 2 has 2 − 1
    assert config.n_layer == 3 and config.stage_first_layers() == [0, 2] == stage_first_layers([3, 2], True)
    torch.manual_seed(0)
    model = HybridClassifier(config).eval()
    kinds = [type(b.mixer).__name__ for s in model.stages[1:] for b in s.blocks]
    assert kinds == ["ReorderingMixinMambaVisionMixer", "MambaVisionMixer", "SelfAttention",
                     "ReorderingMixinMambaVisionMixer", "SelfAttention"]
    x = torch.randn(3, 1, 28, 28)
    with recorded_orders(model) as orders, torch.no_grad():
        logits = model(x)
    assert logits.shape == (3, 10)
    # the first Mamba stage sees 14 × 14 = 196 tokens, the second 7 × 7 = 49
    assert [rec[0][1].shape[-1] for rec in orders.values()] == [196, 49]
    model.save(tmp_path / "hybrid")
    again = load_model(tmp_path / "hybrid")
    assert type(again) is HybridClassifier and again.config == config
    with torch.no_grad():
        torch.testing.assert_close(again(x), logits, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="no plain mixer computes the sort"):
        model.mixers()[0].plain_state_dict()
    code, err = run_cli(["analyze", str(tmp_path / "hybrid"), "--out", str(tmp_path / "an")], capsys)
    assert code == 2 and "holds a hybrid model" in err and err.count("\n") == 1


def test_mambavision_family_in_the_patch_classifier_round_trips(tmp_path):
    config = ClassifierConfig(input_dim=4, n_classes=3, d_model=8, n_layer=2, layer="mambavision", patch_size=2,
                              bidirectional=True, **AUTHORS)
    assert config.d_inner == 4 and config.d_state == 8 and config.d_conv == 3     # the authors' defaults
    torch.manual_seed(0)
    model = MambaClassifier(config).eval()
    x = torch.randn(2, 1, 8, 8)
    model.save(tmp_path / "clf")
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "clf")(x), model(x), rtol=0, atol=0)


def test_refusals_are_one_sentence():
    with pytest.raises(ConfigError, match="looks at later tokens, so a causal language model cannot use it"):
        MambaConfig(d_model=8, n_layer=2, vocab_size=10, layer="mambavision")
    with pytest.raises(ConfigError, match="expand·d_model must be at least 2"):
        ClassifierConfig(input_dim=2, n_classes=2, d_model=1, n_layer=1, layer="mambavision")
    with pytest.raises(ConfigError, match="d_state must be a positive integer"):
        ClassifierConfig(input_dim=2, n_classes=2, d_model=8, n_layer=1, layer="mambavision", d_state=0)
    with pytest.raises(ConfigError, match="reorder_restore must be true or false"):
        HybridConfig(in_channels=1, n_classes=2, reorder="soft", reorder_restore="no")
    with pytest.raises(ConfigError, match="every Mamba stage needs at least one Mamba block"):
        HybridConfig(in_channels=1, n_classes=2, depths=[1, 1, 0])
    with pytest.raises(ConfigError, match="one stride per Mamba stage"):
        HybridConfig(in_channels=1, n_classes=2, strides=[1])
    with pytest.raises(ConfigError, match="reorder_layers \\[4\\] do not exist"):
        HybridConfig(in_channels=1, n_classes=2, reorder="soft", reorder_layers=[4])
    with pytest.raises(ConfigError, match="no one-token step"):
        m = mixer()
        m.step_(torch.zeros(1, 4, dtype=f64), *m.allocate_state(1))


def test_sharpness_of_softsort_lies_between_uniform_and_one():
    from tokendyn.model.reorder import sharpness, softsort_matrix

    s = torch.randn(2, 50, dtype=f64)
    assert sharpness(softsort_matrix(s * 0.0)) == pytest.approx(1 / 50)
    assert sharpness(softsort_matrix(s, tau=1e-4)) == pytest.approx(1.0)
    mid = sharpness(softsort_matrix(s, tau=1.0))
    assert 1 / 50 < mid < 1 and math.isfinite(mid)
