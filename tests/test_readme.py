"""The README as a new user reads it: it opens with what the tool is for and the two commands, CI
runs the second exactly, and every run time it states comes from the generated table."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_opens_with_the_purpose_and_the_two_commands():
    head = README[:2500]
    assert head.index("tokendyn is a library and command-line tool") < head.index("```bash")
    block = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1).strip().splitlines()
    assert block[0] == "bash scripts/setup.sh && .venv/bin/tokendyn reproduce --scale quick --out reproduce-out"
    ci = (ROOT / ".ci" / "run").read_text()
    assert block[1] in ci                                      # CI runs exactly the second command


def test_timing_table_is_the_generated_one(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "timing_table.py"), "--check"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    # and the check can fail: a hand-edited table is caught
    bad = tmp_path / "README.md"
    bad.write_text(README.replace("| what | time |", "| what | time (edited) |"), encoding="utf-8")
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "timing_table.py"), "--check", "--readme", str(bad)],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "not the one generated" in res.stderr


def test_no_stale_run_times_outside_the_table():
    # the contradictions once found: two times each for the tests, the lm and the reorder sections, the D = 16 run
    for stale in ("126 s measured", "161 s", "34 s here", "98.5 s", "22.8 s", "35.5 s", "20.5 s against",
                  "about 2 minutes"):
        assert stale not in README, stale
