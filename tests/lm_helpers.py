"""Shared pieces of the generation tests: a tiny MambaLM with generic (not initial) weights."""

from __future__ import annotations

import torch

from tokendyn.model import MambaConfig, MambaLM

VOCAB = 29


def make_model(dtype=torch.float64, seed=0, device="cpu", **kw):
    """A 2-layer MambaLM (d_model 16, d_state 4, vocabulary 29) on the reference scan, its
    weights moved off the initialisation by seeded noise, in eval mode."""
    torch.manual_seed(seed)
    base = dict(d_model=16, n_layer=2, vocab_size=VOCAB, d_state=4, scan_backend="reference")
    base.update(kw)
    model = MambaLM(MambaConfig(**base))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # generic weights, not the init
        for name, p in model.named_parameters():
            p.add_((0.1 if name.endswith("A_log") else 0.3) * torch.randn(p.shape, generator=g))
    return model.to(device=device, dtype=dtype).eval()
