"""Shared pieces of the training tests: a small deterministic text, tiny run options, the CLI."""

from __future__ import annotations

import random

import pytest

WORDS = ("the lord said unto moses and aaron in the land of egypt saying this month shall be unto you "
         "the beginning of months it shall be the first month of the year to you speak ye unto all the "
         "congregation of israel").split()


def write_text(path, lines: int = 300, seed: int = 0):
    """A text of ``lines`` random sentences over a small vocabulary (about 40 bytes a line)."""
    rng = random.Random(seed)
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "."
                              for _ in range(lines)) + "\n", encoding="utf-8")
    return path


def tiny_args(text, out, *extra):
    """`tokendyn train lm` options of a run that takes about a second on one CPU core."""
    return ["train", "lm", "--text", str(text), "--vocab-size", "300", "--d-model", "16", "--n-layer", "2",
            "--d-state", "4", "--context", "32", "--batch-size", "4", "--steps", "12", "--eval-every", "4",
            "--eval-tokens", "256", "--checkpoint-every", "4", "--monitor-every", "4", "--device", "cpu",
            "--no-progress", "--out", str(out), *extra]


def run_cli(args, capsys) -> tuple[int, str]:
    """Run ``tokendyn ARGS`` in this process; returns (exit status, stderr)."""
    from tokendyn.cli import main

    capsys.readouterr()
    try:
        main(list(map(str, args)))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, capsys.readouterr().err


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("TOKENDYN_CACHE", str(d))
    return d
