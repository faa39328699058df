"""Hidden attention P^d_{lj}: against the plain formula and against the selective scan."""

import pytest
import torch
import torch.nn.functional as F

from tokendyn.analysis.hidden_attention import attention_summary, hidden_attention, hidden_attention_reference
from tokendyn.errors import DataError
from tokendyn.ops import selective_scan_reference


def _inputs(batch, dim, state, length, dtype=torch.float64, seed=0, dt_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    delta = F.softplus(torch.randn(batch, dim, length, generator=g, dtype=torch.float64)) * dt_scale
    A = -torch.exp(torch.randn(dim, state, generator=g, dtype=torch.float64))
    B = torch.randn(batch, state, length, generator=g, dtype=torch.float64)
    C = torch.randn(batch, state, length, generator=g, dtype=torch.float64)
    x = torch.randn(batch, dim, length, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (x, delta, A, B, C)]


@pytest.mark.parametrize("batch,dim,state,length", [(1, 1, 1, 1), (2, 3, 4, 7), (1, 5, 16, 33), (3, 2, 2, 64)])
def test_matches_plain_formula(batch, dim, state, length):
    _, delta, A, B, C = _inputs(batch, dim, state, length, seed=length)
    P = hidden_attention(delta, A, B, C)
    if length <= 33:
        ref = hidden_attention_reference(delta, A, B, C)
        torch.testing.assert_close(P, ref, rtol=1e-10, atol=1e-12)
    assert P.shape == (batch, dim, length, length)
    assert torch.all(P.triu(1) == 0)          # causal: no attention to later tokens


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("batch,dim,state,length", [(1, 4, 3, 9), (2, 6, 16, 40), (1, 3, 8, 128)])
def test_times_x_equals_scan(batch, dim, state, length, dtype, tol):
    """P x = scan output without D and z (float64 oracle)."""
    x, delta, A, B, C = _inputs(batch, dim, state, length, dtype=dtype, seed=dim + length)
    P = hidden_attention(delta, A, B, C)
    y = torch.einsum("bdlj,bdj->bdl", P, x.to(torch.float64))
    y_scan = selective_scan_reference(*(t.to(torch.float64) for t in (x, delta, A, B, C)))
    scale = y_scan.abs().max()
    assert float((y - y_scan).abs().max() / scale) < tol


def test_channel_subset_and_order():
    _, delta, A, B, C = _inputs(2, 7, 4, 12, seed=3)
    full = hidden_attention(delta, A, B, C)
    sub = hidden_attention(delta, A, B, C, channels=[5, 0, 3])
    torch.testing.assert_close(sub, full[:, [5, 0, 3]], rtol=0, atol=0)
    # grouping channels in chunks must not change anything
    small = hidden_attention(delta, A, B, C, max_elements=1)
    torch.testing.assert_close(small, full, rtol=0, atol=0)


def test_strong_decay_stays_finite():
    """Large Δ·A over a long sequence: a product of exp(A c_l) and exp(−A c_j) would
    overflow; the masked difference of cumulative sums must not."""
    x, delta, A, B, C = _inputs(1, 3, 4, 300, seed=7, dt_scale=50.0)
    A = A * 20
    P = hidden_attention(delta, A, B, C)
    assert torch.isfinite(P).all()
    y = torch.einsum("bdlj,bdj->bdl", P, x)
    torch.testing.assert_close(y, selective_scan_reference(x, delta, A, B, C), rtol=1e-9, atol=1e-12)


def test_bad_inputs():
    _, delta, A, B, C = _inputs(1, 3, 2, 5)
    with pytest.raises(DataError):
        hidden_attention(delta, A[:2], B, C)
    with pytest.raises(DataError):
        hidden_attention(delta, A, B, C, channels=[3])
    with pytest.raises(DataError):
        hidden_attention(delta[0], A, B, C)


def test_summary_on_known_matrices():
    eye = torch.eye(5, dtype=torch.float64)
    s = attention_summary(eye)
    assert s["diagonal_fraction"] == 1.0 and s["mean_distance"] == 0.0 and s["row_abs_sum_mean"] == 1.0
    P = torch.zeros(4, 4, dtype=torch.float64)
    P[3, 0] = -2.0                                   # one entry, three steps back
    s = attention_summary(P)
    assert s["diagonal_fraction"] == 0.0 and s["mean_distance"] == 3.0 and s["row_abs_sum_mean"] == 0.5


def test_block_mean_for_display():
    from tokendyn.analysis.render import block_mean

    m = torch.arange(100, dtype=torch.float64).reshape(10, 10)
    small = block_mean(m, 4)                       # blocks of 3, zero padding to 12
    assert small.shape == (4, 4)
    assert float(small[0, 0]) == float(m[:3, :3].mean())
    assert float(small[3, 3]) == float(m[9, 9]) / 9
    assert block_mean(m, 10) is m
