"""The ``chunked`` Mamba-2 (SSD) backend: the block decomposition of the SSD matrix in plain
PyTorch ops (any device; autograd differentiates it as written).

Same function as :func:`tokendyn.ops.ssd_reference.ssd_reference` (docs/scan.md, "The Mamba-2
(SSD) scan"). The sequence is cut into chunks of T steps; with a_t = Δ_t A_h (≤ 0) and the
segment sums seg[t, s] = Σ_{r=s+1..t} a_r inside a chunk, the output of a step splits into the
part that comes from its own chunk and the part carried in by the state at the chunk start:

    1. intra-chunk (the diagonal blocks of M, "attention-like", O(T²) per chunk):
           y_t += Σ_{s≤t in chunk} (C_t·B_s) exp(seg[t, s]) Δ_s x_s
    2. chunk states from a zero start:   S_c = Σ_s exp(seg[T-1, s]) Δ_s x_s ⊗ B_s
    3. states entering each chunk, by a scan over chunks:
           H_0 = initial state,  H_{c+1} = exp(Σ_{chunk c} a) H_c + S_c;  H_{n_chunks} is the final state
    4. state to output:  y_t += exp(Σ_{r≤t in chunk} a_r) C_t · H_c

Every decay is exp of a sum of a's taken over a segment (a cumulative sum of the segment's own
terms, :func:`segsum`), never exp(cs_t)·exp(-cs_s): nothing is ≥ 1, nothing overflows, and
float32 does not cancel a long prefix. Heads are kept as (n_groups, heads per group) so that
C·B is formed once per group and shared by that group's heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .reference import compute_dtype
from .ssd_reference import segsum

DEFAULT_CHUNK = 64


def _chunk_states_scan(S: torch.Tensor, chunk_decay: torch.Tensor, h0: torch.Tensor) -> tuple:
    """Step 3: the state entering every chunk and the final state.

    S: (batch, chunks, groups, hpg, head_dim, state), each chunk's state from a zero start;
    chunk_decay: (batch, groups, hpg, chunks), exp of the chunk's summed a's; h0: (batch, groups,
    hpg, head_dim, state). Returns (entering: like S, final: like h0).

    A sequential loop over chunks: linear in their number (a c×c matrix form would cost
    O(chunks²·head_dim·state)), and with T = 64 a 8,192-step sequence is 128 small steps.
    The per-chunk slices come from ``unbind``: indexing S[:, c] instead would make autograd
    write each slice's gradient into a fresh zero tensor of S's full size, quadratic in chunks.
    """
    h, entering = h0, []
    for S_c, d_c in zip(S.unbind(1), chunk_decay.unbind(-1)):
        entering.append(h)
        h = torch.addcmul(S_c, d_c[..., None, None], h)
    return torch.stack(entering, dim=1), h


def _in_chunks(x, dt, B, C, T: int, groups: int):
    """The inputs padded to whole chunks of T steps and split into them.

    x: (b, L, h, p); dt: (b, L, h); B, C: (b, L, g, n), all in the compute dtype. The padding is
    Δ = 0 steps (decay 1, no input), which leave the state unchanged. Returns x as (b, c, t, g, j, p)
    (j: the heads of a group), Δ as (b, g, j, c, t), B and C as (b, c, t, g, n).
    """
    batch, length, heads, hdim = x.shape
    chunks = -(-length // T)
    pad = chunks * T - length
    if pad:
        x, dt = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(dt, (0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, 0, 0, pad)), F.pad(C, (0, 0, 0, 0, 0, pad))
    hpg, dstate = heads // groups, B.shape[-1]
    xk = x.reshape(batch, chunks, T, groups, hpg, hdim)
    dtk = dt.reshape(batch, chunks, T, groups, hpg).permute(0, 3, 4, 1, 2)
    return xk, dtk, B.reshape(batch, chunks, T, groups, dstate), C.reshape(batch, chunks, T, groups, dstate)


def ssd_chunked(x, dt, A, B, C, D=None, initial_state=None, return_final_state=False,
                chunk_size: int = DEFAULT_CHUNK):
    """Chunk-parallel SSD scan; same contract as :func:`~tokendyn.ops.ssd_reference.ssd_reference`.

    Arguments:
        x: (batch, length, heads, head_dim).
        dt: (batch, length, heads), Δ after bias and softplus (positive).
        A: (heads,), negative. B, C: (batch, length, n_groups, state). D: (heads,) or None.
        initial_state: (batch, heads, head_dim, state) or None (zeros).
        chunk_size: steps per chunk (T); a length that is not a multiple is padded with Δ = 0
            steps (decay 1, no input), which leave the state unchanged.
    Returns y: (batch, length, heads, head_dim) in x's dtype; with ``return_final_state`` also
    S_L: (batch, heads, head_dim, state) in the compute dtype (float32, or float64).
    """
    if chunk_size < 1:
        raise ConfigError(f"ssd_chunked: chunk_size must be a positive number of steps, got {chunk_size}.")
    ct = compute_dtype(x.dtype)
    batch, length, heads, hdim = x.shape
    groups, dstate = B.shape[2], B.shape[3]
    hpg = heads // groups
    xc, dtc, Ac = x.to(ct), dt.to(ct), A.to(ct)
    if initial_state is None:
        h0 = xc.new_zeros(batch, groups, hpg, hdim, dstate)
    else:
        h0 = initial_state.to(ct).reshape(batch, groups, hpg, hdim, dstate)
    if length == 0:
        y = xc.new_zeros(batch, 0, heads, hdim).to(x.dtype)
        return (y, h0.reshape(batch, heads, hdim, dstate).clone()) if return_final_state else y

    T = min(chunk_size, length)
    chunks = -(-length // T)
    xk, dtk, Bk, Ck = _in_chunks(xc, dtc, B.to(ct), C.to(ct), T, groups)
    a = dtk * Ac.reshape(groups, hpg)[..., None, None]                        # Δ A ≤ 0, (b, g, j, c, t)
    seg = segsum(a)                                                           # (b, g, j, c, t, s)

    # 1. intra-chunk: the diagonal blocks of M, W[t, s] = (C_t·B_s) exp(seg[t, s]) Δ_s
    CB = torch.einsum("bctgn,bcsgn->bgcts", Ck, Bk)                          # (b, g, c, t, s)
    W = CB[:, :, None] * torch.exp(seg) * dtk[..., None, :]                   # (b, g, j, c, t, s)
    y = torch.einsum("bgjcts,bcsgjp->bctgjp", W, xk)

    # 2. each chunk's state from a zero start; seg's last row is the decay from s to the chunk end
    # (weights first, as one x-sized tensor: contracting x with B first would form (…, p, n) per step)
    to_end = torch.exp(seg[..., -1, :]) * dtk                                 # (b, g, j, c, s)
    xw = xk * to_end.permute(0, 3, 4, 1, 2)[..., None]                        # (b, c, s, g, j, p)
    S = torch.einsum("bcsgjp,bcsgn->bcgjpn", xw, Bk)                          # (b, c, g, j, p, n)

    # 3. the state entering each chunk; the chunk's whole decay is its cumulative sum's last entry
    cum = a.cumsum(-1)                                                        # Σ_{r≤t} a_r, (b, g, j, c, t)
    entering, final = _chunk_states_scan(S, torch.exp(cum[..., -1]), h0)

    # 4. the entering state's contribution: exp(Σ_{r≤t} a_r) C_t · H_c
    y_off = torch.einsum("bctgn,bcgjpn->bctgjp", Ck, entering)
    y = y + y_off * torch.exp(cum).permute(0, 3, 4, 1, 2)[..., None]          # (b, c, t, g, j, 1)

    y = y.reshape(batch, chunks * T, heads, hdim)[:, :length]
    if D is not None:
        y = y + xc * D.to(ct)[:, None]
    y = y.to(x.dtype)
    return (y, final.reshape(batch, heads, hdim, dstate)) if return_final_state else y
