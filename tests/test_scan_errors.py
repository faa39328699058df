"""Bad input to ``selective_scan``: each case raises a tokendyn exception whose message
is one sentence naming the problem."""

from __future__ import annotations

import pytest
import torch
from error_helpers import one_sentence

from tokendyn.errors import BackendUnavailableError, ScanInputError, TokendynError
from tokendyn.ops import selective_scan


def good(batch=2, dim=3, state=4, length=5, **over):
    t = {
        "u": torch.randn(batch, dim, length),
        "delta": torch.rand(batch, dim, length),
        "A": -torch.rand(dim, state),
        "B": torch.randn(batch, state, length),
        "C": torch.randn(batch, state, length),
        "D": torch.randn(dim),
        "z": torch.randn(batch, dim, length),
        "delta_bias": torch.randn(dim),
    }
    t.update(over)
    return t


def test_good_inputs_pass():
    out = selective_scan(**good(), backend="reference")
    assert out.shape == (2, 3, 5)


@pytest.mark.parametrize("name,bad,pattern", [
    ("u", torch.randn(2, 3), r"u must be \(batch, dim, length\), got shape \(2, 3\)"),
    ("A", -torch.rand(4, 4), r"A must be \(dim=3, state\), got shape \(4, 4\)"),
    ("A", -torch.rand(3), r"A must be \(dim=3, state\), got shape \(3\)"),
    ("delta", torch.rand(2, 3, 6), r"delta must have shape \(2, 3, 5\), got \(2, 3, 6\)"),
    ("B", torch.randn(2, 5, 5), r"B must have shape \(2, 4, 5\), got \(2, 5, 5\)"),
    ("C", torch.randn(2, 4), r"C must have shape \(2, 4, 5\), got \(2, 4\)"),
    ("z", torch.randn(1, 3, 5), r"z must have shape \(2, 3, 5\), got \(1, 3, 5\)"),
    ("D", torch.randn(4), r"D must have shape \(3,\), got \(4\)"),
    ("delta_bias", torch.randn(3, 1), r"delta_bias must have shape \(3,\), got \(3, 1\)"),
])
def test_wrong_shapes(name, bad, pattern):
    with pytest.raises(ScanInputError, match=pattern) as info:
        selective_scan(**good(**{name: bad}))
    one_sentence(info.value)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
@pytest.mark.parametrize("name", ["u", "B", "A"])
def test_wrong_dtypes(name, dtype):
    t = good()
    t[name] = t[name].to(dtype)
    with pytest.raises(ScanInputError, match=rf"{name} has dtype {dtype}; expected a real floating dtype") as info:
        selective_scan(**t)
    one_sentence(info.value)


def test_not_a_tensor():
    with pytest.raises(ScanInputError, match=r"D must be a torch.Tensor, got list") as info:
        selective_scan(**good(D=[1.0, 2.0, 3.0]))
    one_sentence(info.value)


def test_mismatched_devices():
    # The meta device needs no hardware: shapes and devices are checked before any work.
    t = good(C=torch.empty(2, 4, 5, device="meta"))
    with pytest.raises(ScanInputError, match=r"all tensors must be on one device, got \['cpu', 'meta'\]") as info:
        selective_scan(**t)
    one_sentence(info.value)


def test_unknown_backend():
    with pytest.raises(BackendUnavailableError, match=r"unknown scan backend 'fast'; choose one of "
                                                      r"reference, chunked, triton, auto") as info:
        selective_scan(**good(), backend="fast")
    one_sentence(info.value)


def test_triton_needs_cuda():
    with pytest.raises(BackendUnavailableError, match=r"the triton scan backend needs a CUDA device") as info:
        selective_scan(**good(), backend="triton")
    one_sentence(info.value)


def test_errors_share_the_tokendyn_base():
    with pytest.raises(TokendynError):
        selective_scan(**good(u=torch.randn(3)))
    with pytest.raises(ValueError):                # ScanInputError is also a ValueError
        selective_scan(**good(u=torch.randn(3)))
