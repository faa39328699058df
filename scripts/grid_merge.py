"""Merge what calls of scripts/grid_gpu.sh brought back into one results folder, and summarise it.

    python scripts/grid_merge.py EXPERIMENT RESULTS CALL_OUT [CALL_OUT ...]

CALL_OUT: the OUT folder of one call of grid_gpu.sh (its ``runs.tgz`` and ``call.json``). Each
call's complete runs go to RESULTS/runs/ (a run already there is kept, and said so: a run's files
are its record and are not overwritten), its call.json to RESULTS/calls/call_<date>.json, and then
``tokendyn train EXPERIMENT --scale SCALE --summarise-only --out RESULTS`` writes the summary of
every run in RESULTS, at the scale the calls ran (they must agree). Errors (a missing or damaged
file, an archive member outside runs/, calls of different scales) stop it in one sentence before
anything is written.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tokendyn.errors import TokendynError  # noqa: E402


class MergeError(Exception):
    """A call folder that cannot be merged; the message is one sentence."""


def read_call(folder: Path) -> tuple[dict, Path]:
    """(call.json, the path of runs.tgz) of one call's OUT folder."""
    call_path, runs_path = folder / "call.json", folder / "runs.tgz"
    for path in (call_path, runs_path):
        if not path.is_file():
            raise MergeError(f"{folder} holds no {path.name}; pass the OUT folder of a grid_gpu.sh call.")
    try:
        call = json.loads(call_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MergeError(f"{call_path} is not a JSON file ({exc}).") from None
    if not isinstance(call, dict) or not isinstance(call.get("date"), str) or not call.get("scale"):
        raise MergeError(f"{call_path} is not the call.json of grid_gpu.sh (no date or scale).")
    return call, runs_path


def unpack_runs(archive: Path, into: Path) -> list[Path]:
    """The run folders of ``archive`` (members runs/NAME/FILE only), unpacked under ``into``."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            bad = [m.name for m in members if not (m.isfile() or m.isdir())
                   or Path(m.name).parts[:1] != ("runs",) or ".." in Path(m.name).parts or len(Path(m.name).parts) > 3]
            if bad:
                raise MergeError(f"{archive} holds {bad[0]!r}, outside runs/NAME/; it is not a grid_gpu.sh archive.")
            tar.extractall(into, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        # tarfile's own message lists every compression it tried, a line each: its first line only
        detail = (str(exc).splitlines() or [type(exc).__name__])[0].rstrip(":. ")
        raise MergeError(f"{archive} is not a readable tar.gz archive ({detail}).") from None
    runs = sorted(p for p in (into / "runs").iterdir() if p.is_dir()) if (into / "runs").is_dir() else []
    return [r for r in runs if (r / "result.json").is_file()]


def call_stem(call: dict) -> str:
    """call_<YYYY-MM-DDTHH-MMZ> from the call's date."""
    return "call_" + call["date"][:16].replace(":", "-") + "Z"


def write_call(folder: Path, call: dict) -> Path:
    """``call`` as folder/call_<date>.json; a second call of the same minute gets -2, -3, ...; the
    same call merged again is not written twice."""
    text = json.dumps(call, indent=1) + "\n"
    base = call_stem(call)
    for k in range(1, 1000):
        path = folder / (f"{base}.json" if k == 1 else f"{base}-{k}.json")
        if not path.exists():
            path.write_text(text, encoding="utf-8")
            return path
        if path.read_text(encoding="utf-8") == text:
            return path
    raise MergeError(f"{folder} already holds 999 calls of {call['date']}.")


def merge(results: Path, calls: list[Path]) -> tuple[str, list[str], list[str]]:
    """Copy every call's runs and call.json into ``results``; (scale, runs added, runs kept)."""
    read = [read_call(folder) for folder in calls]
    scales = {c["scale"] for c, _ in read}
    if len(scales) > 1:
        raise MergeError(f"the calls ran at different scales ({', '.join(sorted(scales))}); merge each scale apart.")
    added, kept = [], []
    with tempfile.TemporaryDirectory() as tmp:
        unpacked = [unpack_runs(archive, Path(tmp) / str(i)) for i, (_, archive) in enumerate(read)]
        (results / "runs").mkdir(parents=True, exist_ok=True)
        (results / "calls").mkdir(exist_ok=True)
        for (call, _), runs in zip(read, unpacked):
            for run in runs:
                dest = results / "runs" / run.name
                if dest.exists():
                    kept.append(run.name)
                    continue
                shutil.copytree(run, dest)
                added.append(run.name)
            write_call(results / "calls", call)
    return scales.pop(), added, kept


def main(argv: list[str]) -> int:
    if len(argv) < 3 or any(a.startswith("-") for a in argv):
        print("usage: python scripts/grid_merge.py EXPERIMENT RESULTS CALL_OUT [CALL_OUT ...]", file=sys.stderr)
        return 2
    name, results, calls = argv[0], Path(argv[1]), [Path(a) for a in argv[2:]]
    try:
        from tokendyn.experiments import get

        get(name)
        if results.exists() and not results.is_dir():
            raise MergeError(f"{results} exists and is not a directory.")
        scale, added, kept = merge(results, calls)
    except (MergeError, TokendynError) as err:
        print(f"grid_merge.py: {err}", file=sys.stderr)
        return 1
    print(f"added {len(added)} run(s): {' '.join(added) or '-'}")
    if kept:
        print(f"already in {results / 'runs'}, kept as they were: {' '.join(kept)}")
    proc = subprocess.run([sys.executable, "-m", "tokendyn", "train", name, "--scale", scale, "--summarise-only",
                           "--out", str(results)], cwd=ROOT, capture_output=True, text=True, check=False)
    sys.stdout.write(proc.stdout[-3000:])
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-2000:])
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
