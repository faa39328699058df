"""Registers and spills of the scan kernels per launch shape, without a GPU.

    python benchmarks/scan_kernel_resources.py [--arch 90] [--out results/scan_kernel_resources.json]

Compiles the kernels of tokendyn/ops/_triton_kernels.py for an NVIDIA target with Triton's
own compiler (no device is needed for that) and reads the register count and spill bytes
that ``ptxas -v`` reports for the PTX. bfloat16 inputs, every optional term on, 16 states,
integer arguments unspecialized (a real launch specializes strides equal to 1, so its code
can differ slightly). At 255 registers an SM holds 8 warps; spills go to local memory.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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
             "dz_ptr")


def compile_kernel(fn, consts: dict, warps: int, arch: int):
    consts = {k: v for k, v in consts.items() if k in fn.arg_names}
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*bf16" if name in HALF_PTRS else "*fp32"
        else:
            sig[name] = "i32"
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps))


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
    if args.out:
        result = {**provenance(" ".join(["python"] + sys.argv)), "triton": triton.__version__,
                  "arch": args.arch, "rows": rows}
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(out)


if __name__ == "__main__":
    main()
