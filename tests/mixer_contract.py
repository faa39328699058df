"""Behavioural checks of the mixer contract (tokendyn.model.contract), for any mixer: used on every
registered family and variant (tests/test_contract.py) and on a family defined in a test
(tests/test_toy_family.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tokendyn.errors import CheckpointError, ConfigError
from tokendyn.model import IOParameters, Mixer, MixerRun, RMSNorm
from tokendyn.model.internals import MixerInternals


def check_mixer_contract(mixer: nn.Module, d_model: int, *, steps: bool = True, batch: int = 2,
                         length: int = 6, seed: int = 0) -> None:
    """Everything a backbone, generation, the exporters and the analysis rely on, in float64.

    steps: whether the mixer has a one-token step (False: it must refuse one with ConfigError).
    """
    assert isinstance(mixer, nn.Module) and isinstance(mixer, Mixer)
    assert mixer.d_model == d_model and isinstance(mixer.scan_backend, str)
    mixer = mixer.double().eval()
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, length, d_model, generator=g, dtype=torch.float64)
    rtol, atol = 1e-9, 1e-11
    with torch.no_grad():
        run = mixer.run(h, return_state=True)
        assert isinstance(run, MixerRun) and run.out.shape == h.shape and torch.isfinite(run.out).all()
        torch.testing.assert_close(mixer(h), run.out, rtol=rtol, atol=atol)

        # allocate_state: a tuple of tensors, batch first, the same shapes run() returns
        state = mixer.allocate_state(batch)
        assert isinstance(state, tuple) and state and all(isinstance(t, torch.Tensor) for t in state)
        assert all(t.shape[0] == batch and not t.any() for t in state)
        assert [t.shape for t in run.state] == [t.shape for t in state]

        # the one-token step equals the forward, token by token, and ends in run()'s state
        if steps:
            before = [t.clone() for t in state]
            out, *new = mixer.step(h[:, 0], *state)
            assert all(torch.equal(a, b) for a, b in zip(before, state)), "step() changed the given state"
            assert out.shape == (batch, d_model) and len(new) == len(state)
            outs = [mixer.step_(h[:, t], *state) for t in range(length)]
            torch.testing.assert_close(torch.stack(outs, 1), run.out, rtol=rtol, atol=atol)
            for a, b in zip(state, run.state):
                torch.testing.assert_close(a.to(b.dtype), b, rtol=rtol, atol=atol)
        else:
            with pytest.raises(ConfigError):
                mixer.step_(h[:, 0], *state)

        # the norm hook: run(residual, norm=) is run(norm(residual))
        assert isinstance(mixer.takes_residual(), bool) and mixer.fuses_kernels(h) is False   # CPU
        if mixer.takes_residual():
            norm = RMSNorm(d_model).double()
            norm.weight.normal_(1.0, 0.1, generator=g)
            torch.testing.assert_close(mixer.run(h, norm=norm).out, mixer.run(norm(h)).out, rtol=rtol, atol=atol)
            # and run(h, norm=, residual=r) is run(norm(h + r)), returning the stream h + r
            r = torch.randn(h.shape, generator=g, dtype=h.dtype)
            both = mixer.run(h, norm=norm, residual=r)
            torch.testing.assert_close(both.out, mixer.run(norm(h + r)).out, rtol=rtol, atol=atol)
            torch.testing.assert_close(both.residual, h + r, rtol=0, atol=0)

        # internals and io_parameters: THEORY.md's quantities, with matching sizes
        internals = mixer.run(h, return_internals=True).internals
        assert isinstance(internals, MixerInternals)
        params = mixer.io_parameters()
        assert isinstance(params, IOParameters)
        assert set(IOParameters.THEORY_KEYS) <= set(params.keys())
        n, d = params.sizes
        for key, shape in params.expected_shapes().items():
            if key in params:
                assert tuple(params[key].shape) == shape, key
                assert torch.isfinite(params[key]).all() and not params[key].requires_grad, key
        assert (params["A"] < 0).all()
        assert internals.x.shape == (batch, d, length) and internals.delta.shape == (batch, d, length)
        assert internals.B.shape == (batch, n, length) and internals.C.shape == (batch, n, length)
    assert set(mixer.io_parameters(detach=False).keys()) == set(params.keys())

    # plain_state_dict: tensors by name, or a one-sentence refusal
    try:
        plain = mixer.plain_state_dict()
    except CheckpointError:
        pass
    else:
        assert plain and all(isinstance(k, str) and isinstance(v, torch.Tensor) and not v.requires_grad
                             for k, v in plain.items())
    mixer.init_weights_(4)
    with torch.no_grad():
        assert torch.isfinite(mixer(h)).all()
