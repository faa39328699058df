"""A GPU results file that holds one run per device (an H100's and an H200's side by side), each
run measured against mamba_ssm in one process. A newer run of a device replaces its older one, and
the older one's rows move to ``earlier_rows``: how far a ratio moved between two runs on one kind
of card (another host, another day) stays on record.

    {"device": "H200, H100", "date": latest, "commit": latest's, "command": latest's, "note",
     "rows": [...every run's rows, each naming its device, date and commit...],
     "runs": [...each device's whole run...], "earlier_rows": [...]}

Command line: ``python benchmarks/_device_runs.py {train,scan} RESULTS NEW`` merges the runs of
NEW (a file of either layout, e.g. what a lent machine sent back) into RESULTS.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

TRAIN_ROW_KEYS = ("device", "date", "commit", "command", "tokens_per_s_ratio", "peak_mem_ratio",
                  "graph_tokens_per_s_ratio", "graph_peak_mem_ratio", "mamba_ssm_causal_conv1d")


def train_rows(run: dict) -> list[dict]:
    """benchmarks/train_gpu.py: one summary row per run."""
    return [{k: run.get(k) for k in TRAIN_ROW_KEYS}]


def scan_rows(run: dict) -> list[dict]:
    """benchmarks/scan_gpu.py: the run's rows (one per shape and dtype), each naming its device."""
    return [{"device": run.get("device"), "date": run.get("date"), "commit": run.get("commit"), **r}
            for r in run.get("rows", [])]


ROWS_OF: dict[str, Callable[[dict], list[dict]]] = {"train": train_rows, "scan": scan_rows}


def load(path: Path) -> dict:
    """The results file as it stands ({} when absent or not JSON), read once before a run writes."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def runs_of(doc: dict) -> list[dict]:
    """A file's runs: its ``runs``, or the file itself in the older one-run layout."""
    if "runs" in doc:
        return list(doc["runs"])
    return [doc] if doc.get("device") else []


def merge(old: dict, run: dict, rows_of: Callable[[dict], list[dict]]) -> dict:
    """``old`` (a results file's content) with ``run`` as its device's run."""
    runs = runs_of(old)
    replaced = [row for r in runs if r.get("device") == run.get("device") for row in rows_of(r)]
    runs = [r for r in runs if r.get("device") != run.get("device")] + [run]
    latest = max(runs, key=lambda r: r.get("date") or "")
    return {"device": ", ".join(str(r.get("device")) for r in runs), "date": latest.get("date"),
            "commit": latest.get("commit"), "command": latest.get("command"),
            "note": "one run per device, each measured side by side with mamba_ssm in one process; rows name "
                    "their device; earlier_rows: the rows of runs a newer run of the same device replaced",
            "rows": [row for r in runs for row in rows_of(r)], "runs": runs,
            "earlier_rows": list(old.get("earlier_rows", [])) + replaced}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="merge the runs of NEW into RESULTS, one run per device")
    ap.add_argument("kind", choices=sorted(ROWS_OF))
    ap.add_argument("results", type=Path)
    ap.add_argument("new", type=Path)
    args = ap.parse_args(argv)
    new = load(args.new)
    if not runs_of(new):
        raise SystemExit(f"{args.new} holds no run with a device.")
    doc = load(args.results)
    for run in runs_of(new):
        doc = merge(doc, run, ROWS_OF[args.kind])
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(doc, indent=2))
    print(f"{args.results}: " + "; ".join(f"{r.get('device')} {str(r.get('commit'))[:7]}" for r in doc["runs"]))


if __name__ == "__main__":
    main()
