"""The one rule for every file a command writes.

1. Before any work, each output path is checked (:func:`check_output_dir`,
   :func:`check_output_file`, :func:`check_image_file`): a directory is not an existing file, a
   file is not an existing directory, the nearest existing parent is a directory this process can
   create files in (tried, not guessed from permission bits), and a figure's suffix is an image
   format matplotlib writes.
2. Everything is written into temporary places beside the targets (:class:`Staging`) and moved
   into place only when the whole command has succeeded, report files last. A failed or
   interrupted run leaves the targets as they were: it never leaves a finished-looking report.

Into an existing output directory the new files are moved one by one (each :func:`os.replace`
is atomic); files of an earlier run that this run does not write are left alone, so a directory
given by mistake (``--out .``) loses nothing but the files the command writes. This module
imports nothing else of tokendyn's but its errors.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from .errors import DataError

# Moved into an existing directory after every other file, so that a report is never
# newer than what it describes.
REPORT_NAMES = ("report.json", "analysis.json", "report.html", "report.md", "index.html")
_TMP = ".tokendyn-tmp-"


def image_formats() -> list[str]:
    """The file suffixes (without the dot) that matplotlib's savefig writes."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ordinary_mode(path: Path, base: int = 0o666) -> Path:
    """mkdtemp/mkstemp (and safetensors' writer) make private (0700/0600) entries; what lands in
    place gets the mode a plain mkdir/open would have given it (``base`` less the umask)."""
    path.chmod(base & ~_umask())
    return path


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink():
        if p.parent == p:
            break
        p = p.parent
    return p


def _check_parent(path: Path, option: str) -> None:
    """The directory that will hold ``path`` exists or can be created, and accepts new files."""
    anchor = _nearest_existing(path.parent if path.parent != Path("") else Path("."))
    if not anchor.is_dir():
        raise DataError(f"cannot write {option} {path}: {anchor} is a file, not a directory.")
    try:  # the only reliable test of writability (permission bits lie for root, read-only mounts, ACLs)
        fd, probe = tempfile.mkstemp(prefix=_TMP, dir=anchor)
    except OSError as exc:
        raise DataError(f"cannot write {option} {path}: {anchor} does not accept new files "
                        f"({exc.strerror or exc}).") from None
    os.close(fd)
    os.unlink(probe)


def check_output_dir(path: str | Path, option: str = "--out") -> Path:
    """Check a directory the command will fill; returns it as a Path. Raises DataError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{option} {path} is an existing file; give a directory.")
    _check_parent(path / "x", option)
    return path


def check_output_file(path: str | Path, option: str = "--json") -> Path:
    """Check a file the command will write (created or replaced); returns it as a Path."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{option} {path} is an existing directory; give a file name.")
    if path.name in ("", ".", ".."):
        raise DataError(f"{option} {path} names no file.")
    _check_parent(path, option)
    return path


def check_image_file(path: str | Path, option: str = "--plot") -> Path:
    """Check a figure path: a writable file whose suffix is a format matplotlib writes."""
    path = Path(path)
    fmt = path.suffix[1:].lower()
    formats = image_formats()
    if fmt not in formats:
        what = f"unknown image format {fmt!r}" if fmt else "no image suffix"
        raise DataError(f"{option} {path} has {what}; use one of {', '.join('.' + f for f in formats)}.")
    return check_output_file(path, option)


class Staging:
    """Temporary places for a command's outputs, moved into place together by :meth:`commit`.

    ``dir(target)`` gives a fresh directory whose contents end up in ``target``; ``file(target)``
    gives a temporary file name (same suffix) in target's directory; ``path(target)`` gives
    either, so that a file inside a staged directory (``--json OUT/x.json``) is written there.
    """

    def __init__(self) -> None:
        self._dirs: list[tuple[Path, Path]] = []      # (staged, target)
        self._files: list[tuple[Path, Path]] = []

    def dir(self, target: str | Path) -> Path:
        target = Path(target)
        if target.is_dir():
            # inside the target: same file system, and its parent may not be writable
            staged = Path(tempfile.mkdtemp(prefix=_TMP, dir=target))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            staged = Path(tempfile.mkdtemp(prefix=f".{target.name}{_TMP}", dir=target.parent))
        self._dirs.append((ordinary_mode(staged, 0o777), target))
        return staged

    def file(self, target: str | Path) -> Path:
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.stem}{_TMP}", suffix=target.suffix, dir=target.parent)
        os.close(fd)
        self._files.append((ordinary_mode(Path(name), 0o666), target))
        return Path(name)

    def path(self, target: str | Path) -> Path:
        target = Path(target)
        for staged, dir_target in self._dirs:
            try:
                rel = target.resolve().relative_to(dir_target.resolve())
            except ValueError:
                continue
            inner = staged / rel
            inner.parent.mkdir(parents=True, exist_ok=True)
            return inner
        return self.file(target)

    def commit(self) -> None:
        """Move everything into place; Ctrl-C waits until the moves are done."""
        with _sigint_deferred():
            try:
                for staged, target in self._files:
                    os.replace(staged, target)
                for staged, target in self._dirs:
                    if staged.parent.resolve() == target.resolve() or target.is_dir():
                        _merge_into(staged, target)
                        shutil.rmtree(staged, ignore_errors=True)
                    else:
                        os.replace(staged, target)
            except OSError as exc:
                raise DataError(f"cannot move the finished output into place ({exc.strerror or exc}: "
                                f"{exc.filename}).") from None
            finally:
                self.discard()

    def discard(self) -> None:
        """Remove whatever is still staged (the targets are untouched)."""
        for staged, _ in self._dirs:
            shutil.rmtree(staged, ignore_errors=True)
        for staged, _ in self._files:
            try:
                staged.unlink()
            except FileNotFoundError:
                pass
        self._dirs, self._files = [], []


def _merge_into(src: Path, dst: Path) -> None:
    entries = sorted(src.iterdir(), key=lambda p: (p.name in REPORT_NAMES, REPORT_NAMES.index(p.name)
                                                   if p.name in REPORT_NAMES else 0, p.name))
    for entry in entries:
        to = dst / entry.name
        if entry.is_dir() and to.is_dir():
            _merge_into(entry, to)
        else:
            os.replace(entry, to)


@contextmanager
def _sigint_deferred():
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def staged_outputs():
    """``with staged_outputs() as st: write into st.dir(out) / st.file(path)``; committed on
    success, discarded on any exception (Ctrl-C included)."""
    st = Staging()
    try:
        yield st
    except BaseException:
        st.discard()
        raise
    st.commit()
