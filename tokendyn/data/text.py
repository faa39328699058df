"""Text input: the built-in corpus (King James Bible), text files, tokenizers.

The built-in corpus is read from the ``bible`` program of the Debian package
``bible-kjv``, which prints one verse per line with a reference prefix
(``Ge1:1 In the beginning ...``, ``1Sm3:4 ...``); the prefix is stripped here.
Tokenizers are ``tokenizer.json`` files read with the ``tokenizers`` library.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

import torch

from ..errors import DataError

BIBLE_PROGRAM = "bible"
BIBLE_RANGE = "Gen1:1-Rev22:21"
# book abbreviation (optionally with a leading 1-3) + chapter:verse, then a space
_VERSE_PREFIX = re.compile(r"^[1-3]?[A-Za-z]+\d+:\d+\s+")


def strip_verse_reference(line: str) -> str:
    """``'Ge1:1 In the beginning...'`` -> ``'In the beginning...'`` (other lines unchanged)."""
    return _VERSE_PREFIX.sub("", line, count=1).strip()


def bible_raw_output(program: str = BIBLE_PROGRAM) -> str:
    """What ``program -f -m 8192 Gen1:1-Rev22:21`` prints: the whole KJV, a verse a line with its
    reference; :class:`DataError` when the program is missing or prints nothing."""
    exe = shutil.which(program)
    if exe is None:
        raise DataError(
            f"the built-in corpus needs the '{program}' program (Debian package bible-kjv); "
            "install it or pass a text file with --text."
        )
    try:
        # -f: plain text, -m: page size large enough that nothing is paginated
        res = subprocess.run([exe, "-f", "-m", "8192", BIBLE_RANGE], capture_output=True,
                             text=True, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DataError(f"running '{program}' for the built-in corpus failed: {exc}.") from exc
    # a verse is a line with text after its reference
    if res.returncode != 0 or not any(strip_verse_reference(line) for line in res.stdout.splitlines()):
        raise DataError(f"'{program}' printed no verses (exit status {res.returncode}); "
                        "check the bible-kjv installation or pass a text file with --text.")
    return res.stdout


@functools.lru_cache(maxsize=1)
def _bible_verses(program: str) -> tuple[str, ...]:
    raw = bible_raw_output(program)
    return tuple(v for v in (strip_verse_reference(line) for line in raw.splitlines()) if v)


def bible_verses(program: str = BIBLE_PROGRAM) -> list[str]:
    """All verses of the King James Bible, Genesis 1:1 to Revelation 22:21, without references.

    Raises :class:`DataError` when the ``bible`` program is missing.
    """
    return list(_bible_verses(program))


def bible_text(max_chars: int | None = None, program: str = BIBLE_PROGRAM) -> str:
    """The corpus as one string, verses separated by newlines; the first ``max_chars`` at most."""
    verses = _bible_verses(program)
    if max_chars is None:
        return "\n".join(verses)
    parts, total = [], 0
    for v in verses:
        if total >= max_chars:
            break
        parts.append(v)
        total += len(v) + 1
    return "\n".join(parts)[:max_chars]


def read_text_file(path: str | Path) -> str:
    """The UTF-8 text of ``path``; :class:`DataError` when it is missing, unreadable or empty."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"text file {path} is a directory; pass the text files in it.")
    if not path.is_file():
        raise DataError(f"text file {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"text file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from exc
    except OSError as exc:
        raise DataError(f"text file {path} cannot be read: {exc.strerror}.") from exc
    if not text.strip():
        raise DataError(f"text file {path} is empty.")
    return text


def find_tokenizer(checkpoint: str | Path) -> Path | None:
    """``tokenizer.json`` in the checkpoint directory (or beside a checkpoint file), if any."""
    checkpoint = Path(checkpoint)
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    candidate = folder / "tokenizer.json"
    return candidate if candidate.is_file() else None


def load_tokenizer(path: str | Path):
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json`` file (or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"tokenizer file {path} does not exist.")
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise DataError("reading a tokenizer needs the 'tokenizers' package (pip install tokenizers).") from exc
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the library raises a bare Exception on malformed JSON
        raise DataError(f"{path} is not a valid tokenizer.json: {str(exc).splitlines()[0]}.") from exc


def encode(tokenizer, text: str) -> torch.Tensor:
    """Token ids of ``text`` (no special tokens added). Returns (L,) int64."""
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    return torch.tensor(ids, dtype=torch.long)


def encode_prefix(tokenizer, max_tokens: int, program: str = BIBLE_PROGRAM) -> torch.Tensor:
    """The first ``max_tokens`` tokens of the built-in corpus. Returns (max_tokens,) int64.

    Encodes a growing prefix of the text instead of all 4 MB of it.
    """
    chars = 8 * max_tokens
    while True:
        text = bible_text(max_chars=chars, program=program)
        ids = encode(tokenizer, text)
        if ids.numel() >= max_tokens or len(text) < chars:
            return ids[:max_tokens]
        chars *= 2


def byte_tokens(text: str) -> torch.Tensor:
    """UTF-8 bytes of ``text`` as token ids 0..255, for models trained without a tokenizer. (L,) int64."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
