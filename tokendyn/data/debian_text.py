"""English text from Debian packages: the built-in ``english`` corpus of the full scale.

Every source is the text of one Debian package, read from the files the package installs:

========  ==================  ==============================================================
key       package             text
========  ==================  ==============================================================
kjv       bible-kjv           the King James Bible (1611), one verse per line
gcide     dict-gcide          the Collaborative International Dictionary of English
                              (Webster's 1913 and WordNet): definitions and literary citations
python    python3.11-doc      the Python language and library documentation (reST sources)
linux     linux-doc-6.1       the Linux kernel documentation in English (reST; translations
                              left out)
perl      perl-doc            the Perl manual pages (POD)
========  ==================  ==============================================================

Only the KJV is literature; the others are the largest bodies of running English prose that
Debian ships (a dictionary's definitions and citations, and three manuals written as prose with
examples). Each source is split by contiguous blocks (:func:`tokendyn.data.corpus.split_blocks`)
and the splits are joined source by source, so train, validation and test have the same
composition. The files are read under ``$TOKENDYN_PACKAGE_ROOT`` (default ``/``), for machines
where the packages are unpacked somewhere else (``dpkg -x PACKAGE.deb ROOT``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from . import text as textdata

ROOT_ENV = "TOKENDYN_PACKAGE_ROOT"


def package_root() -> Path:
    """``$TOKENDYN_PACKAGE_ROOT``, else ``/``: where the packages' files are read."""
    return Path(os.environ.get(ROOT_ENV) or "/")


# a line that only names the entry's source, e.g. "[1913 Webster]", "[WordNet 1.5 +PJC]"
_GCIDE_SOURCE = re.compile(r"^\[[^\]]*(?:Webster|WordNet|PJC)[^\]]*\]$")


def clean_gcide(raw: str) -> str:
    """The dictionary's entries without its database header, its source tags and indentation.

    The dictd file starts with ``00-database-*`` entries (URL, licence notice) that end at the
    line of equal signs; every entry line is indented and most senses end with a source tag.
    """
    head = raw.find("\n=========\n")
    body = raw[head + len("\n=========\n"):] if head >= 0 else raw
    lines = (line.strip() for line in body.splitlines())
    return "\n".join(line for line in lines if line and not _GCIDE_SOURCE.match(line)) + "\n"


def _read(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix in (".gz", ".dz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path} is not a valid gzip file ({exc}).") from exc
    # a handful of stray Latin-1 bytes in the dictionary: replaced rather than fatal
    return data.decode("utf-8", errors="replace")


def _files(root: Path, patterns: tuple[str, ...], exclude: str | None) -> list[Path]:
    """The files matching ``patterns`` under ``root`` whose path (relative to ``root``) does not
    contain ``exclude``, sorted by path: the order, and so the text, is a function of the files."""
    found: list[Path] = []
    for pattern in patterns:
        hits = sorted(p for p in root.glob(pattern.lstrip("/")) if p.is_file())
        if exclude:
            hits = [p for p in hits if exclude not in p.relative_to(root).as_posix()]
        found.extend(hits)
    return sorted(set(found))


@dataclass(frozen=True)
class Source:
    """One package's text: where its files are and how they become text."""

    key: str
    package: str
    title: str
    patterns: tuple[str, ...] = ()
    exclude: str | None = None
    clean: Callable[[str], str] | None = None
    # a source read by a program rather than from files: () -> text
    program: Callable[[], str] | None = None

    def files(self, root: Path | None = None) -> list[Path]:
        return _files(root or package_root(), self.patterns, self.exclude)

    def read(self, root: Path | None = None) -> tuple[str, int]:
        """(text, number of files read); :class:`DataError` when the package is not installed."""
        if self.program is not None:
            return self.program(), 1
        files = self.files(root)
        if not files:
            raise DataError(f"the built-in English corpus needs the Debian package {self.package} "
                            f"(no {self.patterns[0]} under {root or package_root()}); run scripts/setup.sh, "
                            f"or install it with apt-get install {self.package}.")
        text = "\n".join(_read(p).rstrip("\n") for p in files) + "\n"
        return (self.clean(text) if self.clean else text), len(files)


SOURCES = (
    Source("kjv", "bible-kjv", "King James Bible", program=lambda: textdata.bible_text() + "\n"),
    Source("gcide", "dict-gcide", "Collaborative International Dictionary of English",
           ("usr/share/dictd/gcide.dict.dz",), clean=clean_gcide),
    Source("python", "python3.11-doc", "Python 3.11 documentation",
           ("usr/share/doc/python3.11/html/_sources/**/*.rst.txt",)),
    Source("linux", "linux-doc-6.1", "Linux 6.1 kernel documentation (English)",
           ("usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz",
            "usr/share/doc/linux-doc-6.1/Documentation/**/*.rst"), exclude="/translations/"),
    Source("perl", "perl-doc", "Perl 5.36 manual (POD)", ("usr/share/perl/5.36.0/pod/*.pod",)),
)
PACKAGES = tuple(s.package for s in SOURCES)


def package_version(package: str) -> str | None:
    """The installed version of a Debian package (dpkg-query), or None where dpkg is absent."""
    exe = shutil.which("dpkg-query")
    if exe is None:
        return None
    try:
        res = subprocess.run([exe, "-W", "-f", "${Version}", package], capture_output=True, text=True,
                             timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def read_sources(sources=SOURCES, root: Path | None = None) -> list[tuple[Source, str, dict]]:
    """(source, text, record) per source; the record holds package, version, files, chars and
    the sha256 of the text (what the result files keep as the corpus' composition)."""
    out = []
    for src in sources:
        text, n_files = src.read(root)
        out.append((src, text, {"key": src.key, "package": src.package, "title": src.title,
                                "version": package_version(src.package), "files": n_files, "chars": len(text),
                                "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}))
    return out
