"""Where a number came from: device, date, commit, command and versions.

Every JSON file tokendyn writes (the CLI's reports, the main job, the benchmarks) records
:func:`provenance`; this module imports nothing else of tokendyn's so that any of them can use it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path


def git_commit() -> str | None:
    """The commit of the working tree tokendyn runs from: the environment variable
    TOKENDYN_COMMIT where set (a copy of the tree, e.g. a ``git archive`` on a separate
    benchmark machine, possibly inside some other checkout whose HEAD git would report),
    else git's answer in a checkout, else None."""
    env = os.environ.get("TOKENDYN_COMMIT") or None
    if env:
        return env
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = res.stdout.strip()
    # outside a checkout git fails (or echoes the ref): only a full hash is a commit
    if res.returncode != 0 or len(commit) != 40:
        return None
    # a tree whose tracked files differ from that commit (a copy sent to another machine over an
    # older checkout, uncommitted edits) did not run the commit's code: say so
    try:
        st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return commit
    return commit + "+modified" if st.returncode == 0 and st.stdout.strip() else commit


def provenance(command: str | None = None) -> dict:
    """Where numbers came from: device, date, commit, command, versions."""
    import torch

    dev = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
           else f"cpu ({platform.processor() or platform.machine()})")
    return {
        "device": dev,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": command,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
