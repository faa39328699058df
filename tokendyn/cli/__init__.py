"""The ``tokendyn`` command. Each subcommand lives in its own module and registers
itself on :data:`app`; :func:`main` turns user errors into one line and exit 2, and Ctrl-C
(SIGINT) or SIGTERM into one line and exit 130 or 143 (128 + the signal, as a shell reports a
process the signal ended), after the outputs being written were removed.

Every command follows :mod:`tokendyn.outputs` (paths checked before any work, written in a
temporary place and moved into place when complete) and :mod:`tokendyn.resources` (devices and
memory checked before any work).
"""

from __future__ import annotations

import errno
import signal
import sys
import threading

import typer

from ..errors import Interrupted, TokendynError

# Subcommand modules: importing one registers its command on `app` (tokendyn.cli.root).
from . import analyze as _analyze  # noqa: F401 -- registers its command
from . import export as _export  # noqa: F401 -- registers its command
from . import info as _info  # noqa: F401 -- registers its command
from . import reproduce as _reproduce  # noqa: F401 -- registers its command
from . import root
from . import simulate as _simulate  # noqa: F401 -- registers its command
from . import train as _train  # noqa: F401 -- registers its command
from . import train_image as _train_image  # noqa: F401 -- registers its command
from .root import app, invocation  # noqa: F401 -- the package's names for them

# Errors typer/click raise for a bad command line (unknown option, bad value, missing argument).
# typer >= 0.26 carries its own copy of click and exports the base class; older ones use click's.
_USAGE_ERRORS: tuple[type[BaseException], ...] = tuple(
    c for c in (getattr(typer, "TyperException", None),) if c is not None)
try:
    import click as _click

    _USAGE_ERRORS += (_click.ClickException,)
    _ABORTS: tuple[type[BaseException], ...] = (KeyboardInterrupt, typer.Abort, _click.exceptions.Abort)
except ImportError:  # pragma: no cover - typer without click
    _ABORTS = (KeyboardInterrupt, typer.Abort)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a process Ctrl-C ended
_NOTHING_KEPT = "no output was completed (files being written were removed)."
_SIGNAL_NAMES = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated (SIGTERM)"}
_signal_seen = signal.SIGINT

def _fail(message: str, status: int) -> None:
    # one line: collapse what click or the OS put on several
    print(f"tokendyn: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(status)


def _on_sigterm(signum, frame) -> None:
    # SIGTERM unwinds like Ctrl-C: every `finally` and staging discard runs on the way out
    global _signal_seen
    _signal_seen = signum
    raise KeyboardInterrupt


def _interrupted(exc: BaseException | None) -> None:
    """One line for a stop by signal: what remains (an :class:`Interrupted` anywhere in the
    chain says it), and 128 + the signal's number."""
    what = str(Interrupted.latest) if Interrupted.latest is not None else _NOTHING_KEPT
    while exc is not None:
        if isinstance(exc, Interrupted):
            what = str(exc)
            break
        exc = exc.__cause__ or exc.__context__
    name = _SIGNAL_NAMES.get(_signal_seen, "interrupted")
    # "interrupted; the checkpoint of step 8 ... remains", "interrupted before the first checkpoint; ..."
    _fail(f"{name} {what}" if what.startswith("before") else f"{name}; {what}", 128 + int(_signal_seen))


# write errors a user can act on (make room, choose another place): one sentence, not a traceback
_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.ENAMETOOLONG, errno.ENOTDIR,
                errno.EISDIR, errno.ELOOP, errno.EACCES, errno.EPERM}


def _leave_process_group(finished: bool) -> None:
    """Leave the process group a training command joined under torchrun
    (:func:`tokendyn.train.loop.init_distributed`), as the process that joined it. After a finished
    command every process first waits for the others, so that none tears its connections down
    while another still uses them; after an error or a stop, at once (the others may never come)."""
    dist = sys.modules.get("torch.distributed")    # a command that never imported it joined no group
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: ``tokendyn ARGS``; exits 0, 2 (an error the user can fix, one
    sentence on stderr), 130 (interrupted) or 143 (terminated)."""
    global _signal_seen
    root.ARGS = list(sys.argv[1:] if argv is None else argv)
    _signal_seen = signal.SIGINT
    Interrupted.latest = None
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    finished = False
    try:
        status = app(args=root.ARGS, prog_name="tokendyn", standalone_mode=False)
        finished = True
    except _ABORTS as exc:
        _interrupted(exc)
    except TokendynError as exc:
        _fail(f"error: {exc}", EXIT_USAGE)
    except _USAGE_ERRORS as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":   # a bare command: its help, as typer shows it
            print(exc.format_message(), file=sys.stderr)
            sys.exit(EXIT_USAGE)
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "tokendyn"
        _fail(f"error: {exc.format_message().rstrip('. ')}; see '{where} --help'.", EXIT_USAGE)
    except MemoryError:
        _fail("error: out of memory; ask for a smaller size.", EXIT_USAGE)
    except OSError as exc:
        if exc.errno not in _USER_ERRNOS:
            raise
        _fail(f"error: cannot write {exc.filename or 'the output'}: {exc.strerror}.", EXIT_USAGE)
    except RuntimeError as exc:
        # a size no check foresaw: torch's allocators raise RuntimeError (CUDA: its subclass
        # OutOfMemoryError); anything else is a bug and keeps its traceback
        if type(exc).__name__ != "OutOfMemoryError" and "can't allocate memory" not in str(exc):
            raise
        _fail(f"error: out of memory ({str(exc).splitlines()[0][:200]}); ask for a smaller size.", EXIT_USAGE)
    finally:
        _leave_process_group(finished)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    status = status if isinstance(status, int) else 0
    if status == EXIT_INTERRUPTED:  # typer turns Ctrl-C inside a command into Exit(130)
        _interrupted(None)
    sys.exit(status)
