"""The one rule for every file a command writes.

1. Before any work, each output path is checked (:func:`check_output_dir`,
   :func:`check_output_file`, :func:`check_image_file`): a directory is not an existing file, a
   file is not an existing directory, no name is longer than the file system allows, the nearest
   existing parent is a directory this process can create files in (tried, not guessed from
   permission bits), and a figure's suffix is an image format matplotlib writes.
2. Everything is written into temporary places beside the targets (:class:`Staging`) and moved
   into place only when the whole command has succeeded, report files last. A failed or
   interrupted run leaves the targets as they were: it never leaves a finished-looking report.
   :func:`write_file` is the same rule for one file written on its own (a training run's
   records, a cache entry, a figure).

Where an output already exists and is not a regular file, it is respected as a plain ``open``
would respect it: a symlink's target receives the content (the link stays), and a character
device or FIFO (``/dev/null``, ``/dev/stdout``, a pipe) is written through, never replaced by a
regular file. A full disk (or any other write error) ends in one sentence naming the target,
which keeps its earlier content.

Into an existing output directory the new files are moved one by one (each :func:`os.replace`
is atomic); files of an earlier run that this run does not write are left alone, so a directory
given by mistake (``--out .``) loses nothing but the files the command writes. Temporary names
carry the process id, so staging left by a killed process is recognised and removed by the next
command writing there. This module imports nothing else of tokendyn's but its errors.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from .errors import DataError, Interrupted

# Moved into an existing directory after every other file, so that a report is never
# newer than what it describes.
REPORT_NAMES = ("report.json", "analysis.json", "report.html", "report.md", "index.html")
_TMP = ".tokendyn-tmp-"
_STALE = re.compile(re.escape(_TMP) + r"(\d+)-")
# errors of writing that the user can act on (make room, pick another place); anything else is a bug
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENOENT, errno.EXDEV}


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


def resolve_link(path: str | Path) -> Path:
    """Where content given to ``path`` lands: a symlink's target (followed to the end), else the path."""
    path = Path(path)
    if not path.is_symlink() or is_special(path):
        # a device or pipe is opened through the link itself (/dev/stdout's target in /proc,
        # "pipe:[1234]", names nothing that can be opened)
        return path
    return Path(os.path.realpath(path))


def is_special(path: str | Path) -> bool:
    """True for an existing entry that is neither a regular file nor a directory (a device, a FIFO,
    a socket), after following symlinks: written through, never replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _lexists(path: Path) -> bool:
    try:
        os.lstat(path)
    except (OSError, ValueError):     # absent, or a name the file system cannot even look up
        return False
    return True


def _nearest_existing(path: Path) -> Path:
    p = path
    while not _lexists(p):
        if p.parent == p:
            break
        p = p.parent
    return p


def _check_name_lengths(path: Path, option: str) -> None:
    """Each part of the path fits the file system's limit (ENAMETOOLONG otherwise, half-way)."""
    anchor = _nearest_existing(path)
    try:
        name_max = os.pathconf(anchor if anchor.is_dir() else anchor.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise DataError(f"cannot write {option}: the name {part[:24]}... is {len(os.fsencode(part))} bytes "
                            f"long, more than the {name_max} a file name may have here.")
    if len(os.fsencode(str(path.absolute()))) >= 4096:
        raise DataError(f"cannot write {option}: its path is longer than the 4096 bytes a path may have.")


def _check_parent(path: Path, option: str, shown: Path | None = None) -> None:
    """The directory that will hold ``path`` exists or can be created, and accepts new files
    (``shown``: the path as the message names it)."""
    shown = path if shown is None else shown
    anchor = _nearest_existing(path.parent if path.parent != Path("") else Path("."))
    if not anchor.is_dir():
        raise DataError(f"cannot write {option} {shown}: {anchor} is a file, not a directory.")
    try:  # the only reliable test of writability (permission bits lie for root, read-only mounts, ACLs)
        fd, probe = tempfile.mkstemp(prefix=f"{_TMP}{os.getpid()}-", dir=anchor)
    except OSError as exc:
        raise DataError(f"cannot write {option} {shown}: {anchor} does not accept new files "
                        f"({exc.strerror or exc}).") from None
    os.close(fd)
    os.unlink(probe)


def _check_special(path: Path, option: str) -> None:
    mode = os.stat(path).st_mode
    if not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
        raise DataError(f"{option} {path} is a special file that cannot be written to (a socket or block "
                        "device); give a regular file.")
    if not os.access(path, os.W_OK):
        raise DataError(f"cannot write {option} {path}: permission denied.")


def check_output_dir(path: str | Path, option: str = "--out") -> Path:
    """Check a directory the command will fill; returns it as a Path. Raises DataError."""
    path = Path(path)
    _check_name_lengths(path, option)
    real = resolve_link(path)
    if real.exists() and not real.is_dir():
        raise DataError(f"{option} {path} is an existing file; give a directory.")
    _check_parent(real / "x", option, shown=path)
    return path


def check_output_file(path: str | Path, option: str = "--json") -> Path:
    """Check a file the command will write (created or replaced, or written through when it is a
    device or FIFO); returns it as a Path."""
    path = Path(path)
    _check_name_lengths(path, option)
    real = resolve_link(path)
    if real.is_dir():
        raise DataError(f"{option} {path} is an existing directory; give a file name.")
    if path.name in ("", ".", ".."):
        raise DataError(f"{option} {path} names no file.")
    if is_special(real):
        _check_special(real, option)
        return path
    _check_parent(real, option)
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # someone else's process
        return True
    return True


def remove_stale_staging(directory: Path) -> None:
    """Remove the temporary entries that a killed tokendyn process left in ``directory`` (their
    names carry the process id; entries of running processes are left alone)."""
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return
    for entry in entries:
        m = _STALE.search(entry.name)
        if m is None or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            try:
                entry.unlink()
            except OSError:
                pass


def _tmp_prefix(name: str) -> str:
    # short: the target's name may already be near the file system's limit
    return f".{name[:32]}{_TMP}{os.getpid()}-"


class Staging:
    """Temporary places for a command's outputs, moved into place together by :meth:`commit`.

    ``dir(target)`` gives a fresh directory whose contents end up in ``target``; ``file(target)``
    gives a temporary file name (same suffix) in target's directory; ``path(target)`` gives
    either, so that a file inside a staged directory (``--json OUT/x.json``) is written there.
    Symlinks are followed to their targets; a device or FIFO target is staged in the system's
    temporary directory and copied into it on commit.
    """

    def __init__(self) -> None:
        self._dirs: list[tuple[Path, Path]] = []      # (staged, target)
        self._files: list[tuple[Path, Path]] = []
        self._staged: dict[Path, Path] = {}            # staged -> what the user named (for messages)

    def dir(self, target: str | Path) -> Path:
        named = Path(target)
        target = resolve_link(named)
        if target.is_dir():
            # inside the target: same file system, and its parent may not be writable
            remove_stale_staging(target)
            staged = Path(tempfile.mkdtemp(prefix=f"{_TMP}{os.getpid()}-", dir=target))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_staging(target.parent)
            staged = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target.name), dir=target.parent))
        self._dirs.append((ordinary_mode(staged, 0o777), target))
        self._staged[staged] = named
        return staged

    def file(self, target: str | Path) -> Path:
        named = Path(target)
        target = resolve_link(named)
        if is_special(target):
            fd, name = tempfile.mkstemp(prefix=_tmp_prefix(target.name), suffix=target.suffix[:16])
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_staging(target.parent)
            fd, name = tempfile.mkstemp(prefix=_tmp_prefix(target.stem), suffix=target.suffix[:16],
                                        dir=target.parent)
        os.close(fd)
        self._files.append((ordinary_mode(Path(name), 0o666), target))
        self._staged[Path(name)] = named
        return Path(name)

    def path(self, target: str | Path) -> Path:
        target = Path(target)
        for staged, dir_target in self._dirs:
            try:
                rel = resolve_link(target).resolve().relative_to(dir_target.resolve())
            except ValueError:
                continue
            inner = staged / rel
            inner.parent.mkdir(parents=True, exist_ok=True)
            return inner
        return self.file(target)

    def targets(self) -> str:
        """The outputs the user named, for messages."""
        return ", ".join(str(p) for p in self._staged.values()) or "the output"

    def target_of(self, path: str | os.PathLike | None) -> Path | None:
        """The output a staged path will become (None for a path outside the staging)."""
        if path is None:
            return None
        p = Path(os.fsdecode(path))
        for staged, named in self._staged.items():
            if p == staged:
                return named
            try:
                return named / p.relative_to(staged)
            except ValueError:
                continue
        return None

    def commit(self) -> None:
        """Move everything into place; Ctrl-C and SIGTERM wait until the moves are done (not
        while a device or FIFO is written through: opening a FIFO waits for its reader)."""
        try:
            for staged, target in self._files:
                if is_special(target):
                    write_through(staged, target)
        except OSError as exc:
            self.discard()
            raise DataError(f"cannot write {self.target_of(staged)}: {exc.strerror or exc}.") from None
        except BaseException:
            self.discard()
            raise
        with _signals_deferred():
            try:
                for staged, target in self._files:
                    if not is_special(target):
                        os.replace(staged, target)
                for staged, target in self._dirs:
                    if staged.parent.resolve() == target.resolve() or target.is_dir():
                        _merge_into(staged, target)
                        shutil.rmtree(staged, ignore_errors=True)
                    else:
                        os.replace(staged, target)
            except OSError as exc:
                where = self.target_of(exc.filename) or exc.filename or self.targets()
                raise DataError(f"cannot write {where}: {exc.strerror or exc}.") from None
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


def write_through(src: Path, target: Path) -> None:
    """Copy ``src`` into an existing device or FIFO as a plain open-and-write would."""
    with open(src, "rb") as s, open(target, "wb") as d:
        shutil.copyfileobj(s, d)


def _merge_into(src: Path, dst: Path) -> None:
    entries = sorted(src.iterdir(), key=lambda p: (p.name in REPORT_NAMES, REPORT_NAMES.index(p.name)
                                                   if p.name in REPORT_NAMES else 0, p.name))
    for entry in entries:
        to = dst / entry.name
        if entry.is_dir() and to.is_dir():
            _merge_into(entry, to)
        elif is_special(to):
            write_through(entry, to)
        else:
            os.replace(entry, resolve_link(to))


_DEFERRED = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def _signals_deferred():
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def staged_outputs():
    """``with staged_outputs() as st: write into st.dir(out) / st.file(path)``; committed on
    success, discarded on any exception (Ctrl-C included). A write error in the body (a full
    disk) becomes one DataError naming the output."""
    st = Staging()
    try:
        yield st
    except OSError as exc:
        st.discard()
        if exc.errno not in WRITE_ERRNOS:
            raise
        where = st.target_of(exc.filename) or (exc.filename if exc.filename and _TMP not in str(exc.filename)
                                               else st.targets())
        raise DataError(f"cannot write {where}: {exc.strerror or exc}; the earlier content is unchanged.") from None
    except BaseException as exc:
        st.discard()
        if isinstance(exc, KeyboardInterrupt):
            # what an interrupted step said remains (a training run's checkpoint) was staged here
            # and is gone now
            Interrupted.latest = None
        raise
    st.commit()


def write_file(path: str | Path, content: str | bytes | Callable[[Path], object]) -> Path:
    """Write one file atomically by the rule above: ``content`` (text as UTF-8, bytes, or a
    function that writes the temporary path it is given, e.g. ``fig.savefig``) lands in ``path``
    whole or not at all. Raises DataError for a write error (a full disk). Returns ``path``."""
    with staged_outputs() as st:
        tmp = st.file(path)
        if callable(content):
            content(tmp)
        elif isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        else:
            tmp.write_bytes(content)
    return Path(path)
