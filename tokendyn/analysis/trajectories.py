"""Measured token dynamics through the layers of a model (THEORY.md sections 3-4, in depth).

Depth plays the role of time: the residual stream of token l after layer i is
x_l(i). The norms ‖x_l(i)‖ over (i, l) show whether tokens grow or shrink through
the network, and whether later tokens grow faster (the divergent regime predicts
position-dependent rates).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..dynamics.regimes import least_squares_slope
from ..errors import CheckpointError, DataError


@dataclass
class TokenDynamics:
    """Norms of one sequence through the network (n_layer layers, L tokens, D = d_inner).

    embedding_norms: (L,) ‖x_l‖ entering layer 0;
    token_norms: (n_layer, L) ‖x_l‖ after each layer (residual + mixer output);
    scan_input_norms: (n_layer, L) ‖u_l‖ of the scan input inside each mixer (after conv, SiLU);
    delta_mean: (n_layer, L) mean over channels of Δ_l in each mixer;
    update_cosine: (n_layer, L) cosine between layer i's residual update x(i+1) − x(i) and the
        stream x(i) it is added to (near 0: the update turns the stream more than it stretches it,
        so the stream's norm grows whatever the sign of M; THEORY.md section 4).
    """

    embedding_norms: torch.Tensor
    token_norms: torch.Tensor
    scan_input_norms: torch.Tensor
    delta_mean: torch.Tensor
    update_cosine: torch.Tensor | None = None

    @property
    def all_norms(self) -> torch.Tensor:
        """(n_layer + 1, L): the embedding row, then one row per layer."""
        return torch.cat([self.embedding_norms[None], self.token_norms], dim=0)

    def layer_growth(self) -> torch.Tensor:
        """(n_layer,) growth factor of each layer: geometric mean over tokens of ‖after‖ / ‖before‖."""
        return geometric_growth(self.all_norms)

    def position_growth(self) -> torch.Tensor:
        """(L,) total growth of each token, ‖after the last layer‖ / ‖embedding‖."""
        return ratio(self.token_norms[-1], self.embedding_norms)

    def position_trend(self) -> dict:
        """Do later tokens grow more? Rank correlation of position with log total growth,
        and the least-squares slope of log growth per 100 positions (first token excluded:
        it sees only itself)."""
        g = self.position_growth().log()
        pos = torch.arange(g.numel(), dtype=torch.float64)
        if g.numel() > 2:
            g, pos = g[1:], pos[1:]
        return {"spearman": spearman(pos, g), "log_growth_slope_per_100": slope(pos, g) * 100.0}

    def growth_by_position_bins(self, bins: int = 8) -> list[dict]:
        """Geometric-mean total growth in ``bins`` consecutive position ranges."""
        g = self.position_growth().log()
        length = g.numel()
        edges = torch.linspace(0, length, min(bins, length) + 1).round().long().tolist()
        out = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            if hi > lo:
                out.append({"start": lo, "stop": hi, "growth": float(g[lo:hi].mean().exp())})
        return out


def ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b in float64, with 0/0 read as 1 (a zero token that stays zero did not grow)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    tiny = torch.finfo(torch.float64).tiny
    return torch.where((a == 0) & (b == 0), torch.ones_like(a), a.clamp_min(tiny) / b.clamp_min(tiny))


def geometric_growth(norms: torch.Tensor) -> torch.Tensor:
    """norms: (n_layer + 1, L) -> (n_layer,) exp(mean_l log(norms[i+1, l] / norms[i, l]))."""
    return ratio(norms[1:], norms[:-1]).log().mean(-1).exp()


def slope(x: torch.Tensor, y: torch.Tensor) -> float:
    """Least-squares slope of y on x (1-D tensors); 0 where it is undefined."""
    s = least_squares_slope(x, y)
    return 0.0 if s is None else s


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation (ties broken by order; enough for continuous data)."""
    if x.numel() < 2:
        return 0.0
    rx = x.argsort().argsort().to(torch.float64)
    ry = y.argsort().argsort().to(torch.float64)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / den if den > 0 else 0.0


def dynamics_from_outputs(hidden_states, internals) -> TokenDynamics:
    """Norms from one forward pass with ``output_internals=True`` (batch element 0).

    hidden_states: n_layer + 1 tensors (batch, L, d_model); internals: n_layer objects
    with ``x`` and ``delta`` (batch, D, L).
    """
    if len(hidden_states) != len(internals) + 1:
        raise CheckpointError(
            f"the model returned {len(hidden_states)} hidden states for {len(internals)} layers; "
            "expected one more hidden state than layers."
        )
    # reduce on the model's device, keep only the small (n, L) results, on the CPU
    norms = torch.stack([h[0].detach().to(torch.float64).norm(dim=-1) for h in hidden_states]).cpu()
    cosine = torch.stack([torch.nn.functional.cosine_similarity(
        (b[0] - a[0]).detach().to(torch.float64), a[0].detach().to(torch.float64), dim=-1)
        for a, b in zip(hidden_states[:-1], hidden_states[1:])]).cpu()
    x_norms = torch.stack([m.x[0].detach().to(torch.float64).norm(dim=0) for m in internals]).cpu()
    delta = torch.stack([m.delta[0].detach().to(torch.float64).mean(dim=0) for m in internals]).cpu()
    return TokenDynamics(embedding_norms=norms[0], token_norms=norms[1:],
                         scan_input_norms=x_norms, delta_mean=delta, update_cosine=cosine)


def run_with_internals(model, input_ids: torch.Tensor):
    """One forward pass with internals; input_ids: (L,) or (1, L) int64, or a classifier's
    continuous input with its batch dim. Returns the MambaOutput."""
    if input_ids.dim() == 1 and not input_ids.is_floating_point():
        input_ids = input_ids[None]
    if input_ids.numel() == 0:
        raise DataError("the input has no tokens.")
    vocab = getattr(model.config, "vocab_size", None)
    padded_vocab = getattr(model.config, "padded_vocab_size", vocab)
    if vocab is not None and not input_ids.is_floating_point() and int(input_ids.max()) >= padded_vocab:
        raise DataError(f"token id {int(input_ids.max())} is outside the model's vocabulary of {vocab}; "
                        "the tokenizer does not belong to this checkpoint.")
    device = next(model.parameters()).device
    with torch.no_grad():
        return model(input_ids.to(device), output_internals=True)


def measure_dynamics(model, input_ids: torch.Tensor) -> tuple[TokenDynamics, object]:
    """Run the model on input_ids ((L,) int64) and return (TokenDynamics, the MambaOutput)."""
    out = run_with_internals(model, input_ids)
    return dynamics_from_outputs(out.hidden_states, out.internals), out
