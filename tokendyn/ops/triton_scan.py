"""The ``triton`` scan backend: a fused selective scan (forward and backward) for CUDA.

Same contract as :func:`tokendyn.ops.selective_scan`:
    u, delta, z: (batch, dim, length); A: (dim, state); B, C: (batch, state, length);
    D, delta_bias: (dim,). float32, bfloat16 or float16 inputs, float32 arithmetic inside.

Memory: the forward keeps only h at the end of every (backward) chunk, (batch, dim, length/T,
state) float32; the backward recomputes the states of a chunk from its start state instead of storing
(batch, dim, length, state), and rebuilds y before the gate from them (the gate's gradient
needs it) instead of saving it. Kernels: :mod:`tokendyn.ops._triton_kernels`.

Parallelism: one program per (batch element, block of channels, segment of the length).
A long sequence whose grid at the configured launch shape is short of warps takes the long
launch shape instead (:func:`shape_config`: 2 channels per program, chunks of 256 steps).
Where batch × channel blocks still leave the GPU short of resident warps the length is split
into segments of whole chunks (:func:`plan_launch`): a summary
launch computes each segment's effect on the state, each program folds the summaries before
(forward) or after (backward) its segment into its carry and scans its segment in parallel
with the others. With one segment the launches are those of the unsplit scan.

:func:`scan_forward` and :func:`scan_backward` are the two launches without autograd, for
callers that fuse the scan with the layers around it (:mod:`tokendyn.ops.mixer_core`).

float64 inputs are delegated to the float64-exact ``chunked`` (or ``reference``) backend,
since the kernels compute in float32.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, replace

import torch
import triton

from ..errors import ConfigError
from . import _triton_kernels as K
from .chunked import selective_scan_chunked
from .out_rows import rows_per_batch


@dataclass(frozen=True)
class ScanConfig:
    """Launch shape: channels per program, steps per chunk and warps, for the forward and the
    backward kernel (the forward's chunk ``fwd_chunk`` a multiple of the backward's ``chunk``,
    0: the same; the forward saves h at the end of every backward chunk either way), and the
    segments the length is split into (0: chosen by
    :func:`plan_launch`: a grid under ``split_below_warps_per_sm`` warps per multiprocessor is
    split into at least ``min_split`` segments, enough for about ``warps_per_sm`` warps per
    multiprocessor; n > 0: n segments, at most one per chunk). Where fewer channels per
    program are used (grid short of programs, see :func:`plan_launch`), the warps shrink with
    the tile (:func:`_warps`)."""

    # From the sweep of benchmarks/scan_gpu.py on an H200 (results/scan_gpu_6c1fac1.json, commit
    # 6c1fac1). Forward: 8 channels / 4 warps is as fast as 16 / 4 at (8, 1536, 2048, 16)
    # (0.468 vs 0.466 ms), does not spill registers (16 / 4 spills ~0.9 KB per thread), and
    # is the fastest at (2, 1536, 8192) and (1, 2048, 65536). Backward: 4 channels / 1 warp.
    block_d: int = 8
    chunk: int = 128
    fwd_warps: int = 4
    bwd_block_d: int = 4
    bwd_warps: int = 1
    # Segments: in that sweep a split paid only where the forward's grid held under ~10 warps
    # per multiprocessor ((1, 2048, 65536): 4.35 -> 3.67 ms with 4 segments; (2, 1536, 8192),
    # at 11.6 warps per SM, was fastest unsplit), and 2-3 segments cost more than they saved
    # (the summary pass runs before the scan). The backward's split was slower or within 5%
    # at both long shapes, so the backward is not split unless asked (bwd_segments=0 applies
    # the same rule as the forward).
    segments: int = 0
    bwd_segments: int = 1
    fwd_chunk: int = 0
    warps_per_sm: int = 32
    split_below_warps_per_sm: int = 10
    min_split: int = 4
    # The long launch shape (LONG_SHAPE, :func:`shape_config`) for sequences of at least
    # long_min_length steps whose forward grid at the shape above holds fewer than
    # long_below_warps_per_sm warps per multiprocessor (0: never). From the sweep on an H100
    # (results/scan_gpu_a89b737.json): at (2, 1536, 8192) (11.6 warps per SM) the forward took
    # 0.59 against 0.69 ms and forward+backward 2.58 against 3.02 ms, at (1, 2048, 65536) (7.8)
    # 2.82 against 4.32 ms and 12.95 against 14.72 ms; at (8, 1536, 2048) (46.5) 2 channels were
    # slower (0.51 against 0.47 ms).
    long_below_warps_per_sm: int = 16
    long_min_length: int = 4096

    def __post_init__(self):
        # tile sizes are Triton block shapes (powers of two); warps per program 1..16
        for name in ("block_d", "chunk", "bwd_block_d"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1 or v & (v - 1):
                raise ConfigError(f"scan launch shape: {name} must be a power of two >= 1, got {v!r}.")
        if self.chunk < 16:
            raise ConfigError(f"scan launch shape: chunk must be at least 16, got {self.chunk}.")
        f = self.fwd_chunk
        if not isinstance(f, int) or (f and (f & (f - 1) or f < self.chunk)):
            raise ConfigError(f"scan launch shape: fwd_chunk must be 0 (the same as chunk) or a power of two "
                              f"of at least chunk ({self.chunk}), got {f!r}.")
        for name in ("fwd_warps", "bwd_warps"):
            if getattr(self, name) not in (1, 2, 4, 8, 16):
                raise ConfigError(f"scan launch shape: {name} must be 1, 2, 4, 8 or 16, got {getattr(self, name)!r}.")
        for name in ("segments", "bwd_segments"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"scan launch shape: {name} must be 0 (chosen by shape) or a positive count, "
                                  f"got {getattr(self, name)!r}.")
        if not isinstance(self.long_below_warps_per_sm, int) or self.long_below_warps_per_sm < 0:
            raise ConfigError(f"scan launch shape: long_below_warps_per_sm must be 0 (never) or a positive integer, "
                              f"got {self.long_below_warps_per_sm!r}.")
        for name in ("warps_per_sm", "split_below_warps_per_sm", "min_split", "long_min_length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"scan launch shape: {name} must be a positive integer, got {getattr(self, name)!r}.")


_CONFIG = ScanConfig()

# Fewer channels per program and longer chunks: more programs for the same sequence, and half as
# many chunk boundaries (each one a loop trip and a saved state) per program.
LONG_SHAPE = dict(block_d=2, chunk=256, fwd_chunk=0, fwd_warps=2, bwd_block_d=1, bwd_warps=1)


def shape_config(batch: int, dim: int, length: int, sms: int, cfg: ScanConfig) -> ScanConfig:
    """The launch shape for one scan (pure: no device needed): ``cfg``, or ``cfg`` with
    :data:`LONG_SHAPE` for a sequence of at least ``cfg.long_min_length`` steps whose forward grid,
    batch × ⌈dim / block_d⌉ programs of ``fwd_warps`` warps, holds fewer than
    ``cfg.long_below_warps_per_sm`` warps per multiprocessor. :func:`scan_forward` calls it and
    keeps the result in :class:`ScanSaved`, so the backward runs with the forward's chunk."""
    if not cfg.long_below_warps_per_sm or length < cfg.long_min_length:
        return cfg
    if batch * triton.cdiv(dim, cfg.block_d) * cfg.fwd_warps >= cfg.long_below_warps_per_sm * sms:
        return cfg
    return replace(cfg, **LONG_SHAPE)


@contextlib.contextmanager
def scan_config(**overrides):
    """Temporarily override the launch shape (benchmark sweeps): ``with scan_config(chunk=128): ...``."""
    global _CONFIG
    old = _CONFIG
    _CONFIG = replace(old, **overrides)
    try:
        yield _CONFIG
    finally:
        _CONFIG = old


def current_config() -> ScanConfig:
    """The launch shape in force: the default, or :func:`scan_config`'s override inside its block."""
    return _CONFIG


def chunk_for(length: int, cfg: ScanConfig) -> int:
    """The backward's chunk for a sequence of ``length`` steps: ``cfg.chunk``, shortened for a
    short sequence (it needs no full chunk) to a power of two of at least 16."""
    return max(16, min(cfg.chunk, triton.next_power_of_2(max(length, 1))))


def fwd_chunk_for(length: int, cfg: ScanConfig) -> int:
    """The forward's chunk: ``fwd_chunk`` (0: ``chunk``), shortened like the backward's for a short
    sequence and never below it, so the backward's chunk divides it (both powers of two)."""
    want = cfg.fwd_chunk or cfg.chunk
    return max(chunk_for(length, cfg), min(want, triton.next_power_of_2(max(length, 1))))


@functools.cache
def multiprocessors(device: torch.device) -> int:
    """The device's multiprocessor count (1 off CUDA); cached: the property lookup costs tens of
    microseconds of host time per launch."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


# the forward prologue folds up to segments - 1 summaries per program: keep that small
MAX_SEGMENTS = 64


@dataclass(frozen=True)
class Launch:
    """One kernel's grid: channels per program, warps, segments and chunks per segment."""

    block_d: int
    warps: int
    segments: int
    chunks_per_segment: int


def plan_launch(batch: int, dim: int, n_chunks: int, block_d: int, warps: int, segments: int,
                sms: int, warps_per_sm: int, split_below: int = 10, min_split: int = 4) -> Launch:
    """The grid of one scan kernel (pure: no device needed).

    Segments: ``segments`` if > 0; else, where the grid of batch × ⌈dim/block_d⌉ programs of
    ``warps`` warps holds fewer than ``split_below`` warps per multiprocessor, at least
    ``min_split`` and enough to reach ``warps_per_sm`` (a fuller grid stays unsplit: splitting
    adds a summary pass over all but the last segment before the scan); at most one per
    chunk and :data:`MAX_SEGMENTS`, and every segment gets whole chunks (the count is then
    reduced to what ⌈n_chunks / segments⌉ chunks per segment need).
    Channels per program: ``block_d``, halved while the grid is short of 4 programs per
    multiprocessor (where segments could not fill it: short sequences at small batch), with
    the warps shrunk in proportion (:func:`_warps`)."""
    n_chunks = max(n_chunks, 1)
    if segments <= 0:
        grid_warps = batch * triton.cdiv(dim, block_d) * warps
        segments = 1 if grid_warps >= split_below * sms else \
            max(min_split, triton.cdiv(warps_per_sm * sms, grid_warps))
    segments = max(1, min(segments, n_chunks, MAX_SEGMENTS))
    cps = triton.cdiv(n_chunks, segments)
    segments = triton.cdiv(n_chunks, cps)
    bd = block_d
    while bd > 1 and batch * segments * triton.cdiv(dim, bd) < 4 * sms:
        bd //= 2
    return Launch(bd, _warps(warps, bd, block_d), segments, cps)


def _warps(want: int, bd: int, want_bd: int) -> int:
    """Warps per program: ``want`` for the configured ``want_bd`` channels, scaled down with the
    tile where :func:`plan_launch` gave fewer channels, so each thread keeps as many elements as in
    the tuned launch shape (rather than the scan spreading a small tile over idle warps)."""
    return max(1, want * bd // want_bd)


def cast_like(g: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor | None:
    """A gradient in its input's dtype (None where either is None): the kernels accumulate
    dA, dB, dC, dD, dbias in float32 whatever the inputs' dtypes."""
    return None if g is None or like is None else g.to(like.dtype)


def _lastdim_contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None or t.stride(-1) == 1:
        return t
    return t.contiguous()


def _empty(shape, dtype, device) -> torch.Tensor:
    """Every buffer a kernel must fill; tests replace this to poison them with NaN."""
    return torch.empty(shape, dtype=dtype, device=device)


def _strides3(t: torch.Tensor | None) -> tuple[int, int]:
    return (0, 0) if t is None else (t.stride(0), t.stride(1))


@dataclass(frozen=True)
class ScanSaved:
    """What the backward needs from the forward besides the inputs: h at the end of every
    chunk, (batch, dim, n_chunks, state) float32, the chunk length and the launch shape."""

    states: torch.Tensor
    chunk: int
    cfg: ScanConfig


def scan_forward(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                 cfg: ScanConfig | None = None) -> tuple[torch.Tensor, ScanSaved]:
    """The forward launch, outside autograd. Inputs as :func:`selective_scan_triton` (u, delta,
    B, C, z with unit stride along length). Returns out (batch, dim, length) in u's dtype and
    the :class:`ScanSaved` that :func:`scan_backward` takes."""
    batch, dim, length = u.shape
    # the launch shape is chosen here, once, and the backward takes it from ScanSaved
    cfg = shape_config(batch, dim, length, multiprocessors(u.device), cfg or _CONFIG)
    out, states, T = _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, cfg)
    return out, ScanSaved(states, T, cfg)


def scan_backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, dout, saved: ScanSaved,
                  dlast=None, dz=None):
    """The backward launch, outside autograd: gradients (du, ddelta, dz, dA, dB, dC, dD, dbias)
    for upstream dout (batch, dim, length) (unit stride along length) and, optionally, dlast
    (batch, dim, state) float32 for h_L. du, ddelta, dz come in their inputs' dtypes; dA, dB,
    dC, dD, dbias in float32 (None where the input is None). ``dz``: where to write dz, in z's
    shape and dtype with strides (m·dim·length, length, 1) (a channel slice of a larger gradient,
    which then needs no concatenation; ops/out_rows.py); else a new one."""
    return _backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, dout, saved.states,
                     saved.chunk, dlast, saved.cfg, dz)


def _segment_buffers(batch, dim, nstate, launch: Launch, device):
    """(sum, dsum) summary buffers for a split launch: (batch, dim, segments, state) and
    (batch, dim, segments) float32; None, None with one segment (nothing to summarize)."""
    if launch.segments == 1:
        return None, None
    return (_empty((batch, dim, launch.segments, nstate), torch.float32, device),
            _empty((batch, dim, launch.segments), torch.float32, device))


def _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, cfg: ScanConfig):
    """Launch the forward. Returns out (batch, dim, length) in u's dtype, states
    (batch, dim, n_saved, state) float32 (h at the end of each of the backward's chunks) and
    the backward's chunk length."""
    batch, dim, length = u.shape
    nstate = A.shape[1]
    TS = chunk_for(length, cfg)          # the backward's chunk: states are saved at its ends
    T = fwd_chunk_for(length, cfg)
    n_chunks = triton.cdiv(length, T)
    lp = plan_launch(batch, dim, n_chunks, cfg.block_d, cfg.fwd_warps, cfg.segments,
                     multiprocessors(u.device), cfg.warps_per_sm, cfg.split_below_warps_per_sm, cfg.min_split)
    NP = triton.next_power_of_2(nstate)
    out = _empty((batch, dim, length), u.dtype, u.device)
    n_saved = triton.cdiv(length, TS)
    states = _empty((batch, dim, n_saved, nstate), torch.float32, u.device)
    # the state entering each segment, written by the forward's own prologue
    carry = _empty((batch, dim, lp.segments, nstate), torch.float32, u.device)
    hsum, dsum = _segment_buffers(batch, dim, nstate, lp, u.device)
    n_d = triton.cdiv(dim, lp.block_d)
    flags = dict(HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
                 BD=lp.block_d, T=T, NP=NP, num_warps=lp.warps)
    if hsum is not None:
        # every segment's end state from a zero start, but the last one's (nobody reads it)
        K._scan_fwd_summary_kernel[(n_d, batch, lp.segments - 1)](
            u, delta, A, B, delta_bias, hsum, dsum,
            length, dim, nstate, n_chunks, lp.segments, lp.chunks_per_segment,
            *_strides3(u), *_strides3(delta), *_strides3(B), A.stride(0), A.stride(1), **flags)
    K._scan_fwd_kernel[(n_d, batch, lp.segments)](
        u, delta, A, B, C, D, z, delta_bias, out, states, carry,
        carry if hsum is None else hsum, carry if dsum is None else dsum,
        length, dim, nstate, n_chunks, lp.segments, lp.chunks_per_segment, n_saved,
        *_strides3(u), *_strides3(delta), *_strides3(z), *_strides3(B), *_strides3(C),
        A.stride(0), A.stride(1),
        HAS_D=D is not None, HAS_Z=z is not None, TS=TS, **flags,
    )
    return out, states, TS


def _backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, dout, states, T,
              dlast, cfg: ScanConfig, dz=None):
    batch, dim, length = u.shape
    nstate = A.shape[1]
    n_chunks = states.shape[2]
    lp = plan_launch(batch, dim, n_chunks, cfg.bwd_block_d, cfg.bwd_warps, cfg.bwd_segments,
                     multiprocessors(u.device), cfg.warps_per_sm, cfg.split_below_warps_per_sm, cfg.min_split)
    NP = triton.next_power_of_2(nstate)
    f32 = dict(device=u.device, dtype=torch.float32)
    # the kernel rounds these straight to the input dtypes when it stores them
    du = _empty((batch, dim, length), u.dtype, u.device)
    ddelta = _empty((batch, dim, length), delta.dtype, u.device)
    if z is None:
        dz = None
    elif dz is None:
        dz = _empty((batch, dim, length), z.dtype, u.device)
    else:
        rows_per_batch(dz, z, "dz")
    dA = torch.zeros(batch, dim, nstate, **f32)
    dB = torch.zeros(batch, nstate, length, **f32)
    dC = torch.zeros(batch, nstate, length, **f32)
    # per segment partial sums, added up below
    dD = _empty((lp.segments, batch, dim), torch.float32, u.device) if D is not None else None
    dbias = _empty((lp.segments, batch, dim), torch.float32, u.device) if delta_bias is not None else None
    # each half read only after the prologue or the chunk before has written it: no zeroing
    scarry = _empty((2, batch, dim, lp.segments, nstate), torch.float32, u.device)
    ssum, dsum = _segment_buffers(batch, dim, nstate, lp, u.device)
    n_d = triton.cdiv(dim, lp.block_d)
    flags = dict(HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
                 HAS_DLAST=dlast is not None, BD=lp.block_d, T=T, NP=NP, num_warps=lp.warps)
    if ssum is not None:
        # every segment's adjoint at its first step from a zero end, but the first one's
        K._scan_bwd_summary_kernel[(n_d, batch, lp.segments - 1)](
            delta, A, C, z, delta_bias, dout, dlast, ssum, dsum,
            length, dim, nstate, n_chunks, lp.segments, lp.chunks_per_segment,
            *_strides3(delta), *_strides3(z), *_strides3(C), A.stride(0), A.stride(1),
            *_strides3(dout), **flags)
    K._scan_bwd_kernel[(n_d, batch, lp.segments)](
        u, delta, A, B, C, D, z, delta_bias, dout, states, dlast, scarry,
        scarry if ssum is None else ssum, scarry if dsum is None else dsum,
        du, ddelta, dz, dA, dB, dC, dD, dbias,
        length, dim, nstate, n_chunks, lp.segments, lp.chunks_per_segment,
        *_strides3(u), *_strides3(delta), *_strides3(z), *_strides3(B), *_strides3(C),
        A.stride(0), A.stride(1), *_strides3(dout), dz.stride(0) if dz is not None else 0,
        HAS_D=D is not None, **flags,
    )
    return du, ddelta, dz, dA.sum(0), dB, dC, (dD.sum((0, 1)) if dD is not None else None), \
        (dbias.sum((0, 1)) if dbias is not None else None)


class _SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, want_last):
        cfg = _CONFIG
        u, delta, B, C, z = (_lastdim_contiguous(t) for t in (u, delta, B, C, z))
        out, saved = scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, cfg)
        # h_L only when asked for: a copy kernel and an allocation fewer per layer otherwise
        last = saved.states[:, :, -1, :].clone() if want_last else None
        ctx.cfg, ctx.T, ctx.delta_softplus = saved.cfg, saved.chunk, delta_softplus
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, saved.states)
        # an unused output's gradient arrives as None instead of a tensor of zeros
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        dout = torch.zeros_like(u) if dout is None else _lastdim_contiguous(dout)
        if dlast is not None:
            dlast = dlast.float().contiguous()
        du, ddelta, dz, dA, dB, dC, dD, dbias = scan_backward(
            u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, dout,
            ScanSaved(states, ctx.T, ctx.cfg), dlast)
        return (cast_like(du, u), cast_like(ddelta, delta), cast_like(dA, A), cast_like(dB, B), cast_like(dC, C),
                cast_like(dD, D), cast_like(dz, z), cast_like(dbias, delta_bias), None, None)


def _fallback(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    # float64 or empty input: the parallel PyTorch scan, exact in float64 (the dispatcher's
    # EXACT_BACKEND, tokendyn.ops.scan)
    return selective_scan_chunked(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                  delta_softplus=delta_softplus, return_last_state=return_last_state)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, return_last_state=False):
    """Fused selective scan on CUDA (differentiable in every tensor argument).

    u, delta, z: (batch, dim, length); A: (dim, state); B, C: (batch, state, length);
    D, delta_bias: (dim,). Returns out (batch, dim, length) in u's dtype; with
    ``return_last_state`` also h_L: (batch, dim, state) float32 (its gradient flows too).
    """
    if u.dtype == torch.float64 or u.shape[-1] == 0:
        return _fallback(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    out, last = _SelectiveScanTriton.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                           bool(return_last_state))
    return (out, last) if return_last_state else out
