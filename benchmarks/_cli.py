"""The arguments and provenance every GPU benchmark shares: where its JSON goes, and which commit
it records (a lent machine gets a copy of the tree without git, so the commit comes as an argument)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tokendyn.provenance import provenance


def bench_parser(default_out: str, description: str | None = None) -> argparse.ArgumentParser:
    """A parser with --out (default ``default_out``) and --commit; the script adds its own flags."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default=default_out, help=f"results file (default: {default_out})")
    ap.add_argument("--commit", default=None, help="commit to record (default: git's HEAD)")
    return ap


def bench_provenance(script: str, args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    """Device, date, commit and the command that reproduces this run, ``python benchmarks/SCRIPT
    ARGS``, whether the script was called from the shell (argv None: sys.argv) or from Python."""
    rest = sys.argv[1:] if argv is None else list(argv)
    prov = provenance(" ".join(["python", f"benchmarks/{Path(script).name}", *rest]))
    if args.commit:
        prov["commit"] = args.commit
    return prov
