"""Benchmark: the README's two commands, timed as a user runs them (with the environment in place).

1. ``.venv/bin/tokendyn reproduce --scale quick --out DIR`` (a fresh temporary DIR): wall time,
   each section's time and the check counts from its report.json;
2. ``.venv/bin/ruff check . && .venv/bin/python -m pytest -q -n 2``: wall time of each part and
   pytest's summary line.

``scripts/setup.sh`` is not run (it only checks what is already installed when the environment
exists; a fresh one is minutes of downloads). The machine is shared, so the load average before and
after each command is recorded.

Writes results/readme_commands.json: one entry per command, each with its own provenance (device,
date, commit, command; the CPU model and cores); a part skipped keeps the entry already there.
Run from the repository root: python benchmarks/readme_commands.py [--skip-tests | --skip-reproduce]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from simulate_d16 import cpu_model  # benchmarks/ is on sys.path when a script runs

from tokendyn.provenance import provenance


def timed(cmd: list[str], cwd: Path) -> dict:
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    return {"command": " ".join(cmd), "wall_s": round(time.perf_counter() - t0, 1), "exit_status": res.returncode,
            "load_1min_before": load, "load_1min_after": os.getloadavg()[0],
            "last_line": (res.stdout.strip().splitlines() or [""])[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/readme_commands.json"))
    ap.add_argument("--skip-tests", action="store_true", help="time the main job only")
    ap.add_argument("--skip-reproduce", action="store_true", help="time ruff and the test suite only")
    args = ap.parse_args()
    root = Path(__file__).resolve().parent.parent
    venv = root / ".venv" / "bin"
    result: dict = {}
    if not args.skip_reproduce:
        with tempfile.TemporaryDirectory() as tmp:
            run = timed([str(venv / "tokendyn"), "reproduce", "--scale", "quick", "--out", f"{tmp}/reproduce-out"],
                        root)
            report = Path(tmp, "reproduce-out", "report.json")
            if report.is_file():
                d = json.loads(report.read_text())
                run["sections_s"] = {k: s["seconds"] for k, s in d["sections"].items()}
                run["outcomes"] = d["outcomes"]
        result["reproduce_quick"] = run
        print(f"reproduce --scale quick: {run['wall_s']} s", flush=True)
    if not args.skip_tests:
        ruff = timed([str(venv / "ruff"), "check", "."], root)
        tests = timed([str(venv / "python"), "-m", "pytest", "-q", "-n", "2"], root)
        result["tests"] = {"ruff": ruff, "pytest": tests, "wall_s": round(ruff["wall_s"] + tests["wall_s"], 1)}
        print(f"ruff + pytest: {result['tests']['wall_s']} s ({tests['last_line']})", flush=True)
    prov = provenance(" ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]))
    prov.update({"cpu_model": cpu_model(), "cores": os.cpu_count()})
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    merged = {k: v for k, v in old.items() if k in ("reproduce_quick", "tests")}
    merged.update({k: {**v, "provenance": prov} for k, v in result.items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
