"""Registers and spills of the scan kernels per launch shape, and of the conv kernels with their
global loads and stores by width, without a GPU.

    python benchmarks/scan_kernel_resources.py [--arch 90] [--out results/scan_kernel_resources.json]

Compiles the kernels of tokendyn/ops/_triton_kernels.py for an NVIDIA target with Triton's
own compiler (no device is needed for that) and reads the register count and spill bytes
that ``ptxas -v`` reports for the PTX. bfloat16 inputs, every optional term on, 16 states,
integer arguments unspecialized (a real launch specializes strides equal to 1, so its code
can differ slightly). At 255 registers an SM holds 8 warps; spills go to local memory.

``conv_rows``: the causal conv + SiLU kernels of tokendyn/ops/_triton_conv.py (4 taps, bias),
with pointers and integer arguments marked divisible by 16 as a launch on the mixer's shapes
specializes them, and the count of ``ld.global``/``st.global`` instructions in the PTX by
width: the conv kernels unroll fully, so these are each thread's instructions per program. A
tile read at a shift that is not a multiple of 8 steps cannot use 16-byte loads, which shows
as 2-byte (``b16``) loads.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokendyn.ops import _triton_conv as C  # noqa: E402 -- after the sys.path setup
from tokendyn.ops import _triton_kernels as K  # noqa: E402 -- after the sys.path setup
from tokendyn.ops.triton_scan import ScanConfig  # noqa: E402 -- after the sys.path setup
from tokendyn.provenance import provenance  # noqa: E402 -- after the sys.path setup

FLAGS = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True)
# (kernel, its constexprs beyond BD, T, NP); the ones that are absent in the kernel are dropped
KERNELS = {
    "fwd": (K._scan_fwd_kernel, FLAGS),
    "fwd_summary": (K._scan_fwd_summary_kernel, FLAGS),
    "bwd": (K._scan_bwd_kernel, dict(FLAGS, HAS_DLAST=False, dlast_ptr=None)),
    "bwd_summary": (K._scan_bwd_summary_kernel, dict(FLAGS, HAS_DLAST=False, dlast_ptr=None)),
}
FWD_SHAPES = [(16, 128, 4), (16, 128, 8), (8, 128, 4), (8, 128, 2), (4, 128, 1), (4, 128, 2), (2, 128, 1),
              (16, 64, 4), (8, 64, 2), (16, 256, 4), (2, 256, 2), (2, 512, 4), (1, 512, 2), (1, 1024, 4)]
# the backward's chunk, at whose ends the forward saves h (the forward's chunk may be longer)
BWD_CHUNK = ScanConfig().chunk
BWD_SHAPES = [(4, 128, 1), (2, 128, 1), (8, 128, 1), (4, 128, 2), (8, 128, 2), (4, 64, 1), (2, 64, 1), (1, 128, 1),
              (1, 256, 1), (2, 256, 2)]
HALF_PTRS = ("u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr", "dout_ptr", "du_ptr", "ddelta_ptr",
             "dz_ptr", "x_ptr", "g_ptr", "dx_ptr")
CONV_KERNELS = {"fwd": C._conv_silu_fwd_kernel, "fwd_cols": C._conv_silu_fwd_cols_kernel,
                "bwd_taps": C._conv_silu_bwd_taps_kernel, "bwd_cols": C._conv_silu_bwd_cols_kernel,
                "bwd_recompute": C._conv_silu_bwd_kernel}
CONV_SHAPES = [(4, 256, 4), (2, 256, 4), (8, 128, 4), (2, 512, 4), (4, 512, 8)]   # (BD, BT, warps)


def compile_kernel(fn, consts: dict, warps: int, arch: int, divisible: bool = False):
    """``divisible``: every pointer and integer argument marked divisible by 16, as a launch
    specializes them when they are."""
    consts = {k: v for k, v in consts.items() if k in fn.arg_names}
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
            continue
        if name.endswith("_ptr"):
            sig[name] = "*bf16" if name in HALF_PTRS else "*fp32"
        else:
            sig[name] = "i32"
        if divisible:
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()},
                    attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps))


def global_accesses(ptx: str) -> dict:
    """Count of ld.global / st.global instructions in the PTX by form (width), e.g. 'ld.global.b16'."""
    return dict(sorted(Counter(re.findall(r"\b(?:ld|st)\.global(?:\.[a-z0-9]+)+", ptx)).items()))


def conv_rows(arch: int) -> list[dict]:
    """Each conv kernel at each launch shape of CONV_SHAPES, 4 taps with a bias; the backward
    writing dx into the x half of xz's gradient (DXM = 2), as in the mixer's fused core."""
    rows = []
    for bd, bt, warps in CONV_SHAPES:
        for name, fn in CONV_KERNELS.items():
            k = compile_kernel(fn, dict(HAS_BIAS=True, K=4, BD=bd, BT=bt, DXM=2), warps, arch, divisible=True)
            ptx = k.asm["ptx"]
            row = {"kernel": name, "block_d": bd, "block_t": bt, "warps": warps, **ptxas_usage(ptx, arch),
                   "global_accesses": global_accesses(ptx)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def ptxas_usage(ptx: str, arch: int) -> dict:
    """Registers and spill bytes from ``ptxas -v`` (the ptxas Triton ships that reads this PTX)."""
    bindir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    out = ""
    for exe in ("ptxas", "ptxas-blackwell"):
        if not (bindir / exe).exists():
            continue
        res = subprocess.run([str(bindir / exe), "-v", "--gpu-name", f"sm_{arch}a", f.name, "-o", "/dev/null"],
                             capture_output=True, text=True)
        out = res.stdout + res.stderr
        if res.returncode == 0:
            break
    Path(f.name).unlink()
    regs = re.search(r"Used (\d+) registers", out)
    spill = re.search(r"(\d+) bytes spill stores", out)
    return {"registers": int(regs.group(1)) if regs else None, "spill_bytes": int(spill.group(1)) if spill else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    for names, shapes in [(("fwd", "fwd_summary"), FWD_SHAPES), (("bwd", "bwd_summary"), BWD_SHAPES)]:
        for bd, chunk, warps in shapes:
            for name in names:
                fn, flags = KERNELS[name]
                k = compile_kernel(fn, dict(flags, BD=bd, T=chunk, NP=16, TS=min(chunk, BWD_CHUNK)), warps,
                                   args.arch)
                row = {"kernel": name, "block_d": bd, "chunk": chunk, "warps": warps,
                       **ptxas_usage(k.asm["ptx"], args.arch)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    convs = conv_rows(args.arch)
    if args.out:
        result = {**provenance(" ".join(["python"] + sys.argv)), "triton": triton.__version__,
                  "arch": args.arch, "rows": rows, "conv_rows": convs}
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(out)


if __name__ == "__main__":
    main()
