"""Devices and memory, checked in one place before any work.

:func:`resolve_device` is what every ``--device`` option goes through; :func:`check_memory`
compares an estimate of what a run needs with what the device has free, so that an absurd size
is refused with a sentence instead of failing (or swapping) half-way. Imports nothing else of
tokendyn's but its errors.
"""

from __future__ import annotations

import os

from .errors import ConfigError

DEVICE_CHOICES = "cpu, cuda, cuda:N or auto"


def resolve_device(name: str, option: str = "--device") -> str:
    """``auto`` -> ``cuda`` where CUDA is available, else ``cpu``; ``cpu``, ``cuda`` and ``cuda:N``
    are checked against this machine. Returns the device string; raises ConfigError."""
    import torch

    name = str(name).strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name == "cuda" or name.startswith("cuda:"):
        index = name.partition(":")[2]
        if index and not index.isdigit():
            raise ConfigError(f"unknown {option} {name!r}; choose {DEVICE_CHOICES}.")
        if not torch.cuda.is_available():
            raise ConfigError(f"{option} {name} was asked for but no CUDA device is available; use cpu.")
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"{option} {name}: this machine has {torch.cuda.device_count()} CUDA device(s).")
        return name
    raise ConfigError(f"unknown {option} {name!r}; choose {DEVICE_CHOICES}.")


def available_memory(device: str = "cpu") -> int | None:
    """Bytes free for new tensors on ``device`` (None where it cannot be told)."""
    if str(device).startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def check_memory(needed: float, device: str, what: str) -> None:
    """Raise ConfigError when ``needed`` bytes (an estimate) exceed what ``device`` has free.

    what: the size that asks for it, e.g. "--max-tokens 1000000 (24 layers)".
    """
    free = available_memory(device)
    if free is not None and needed > free:
        raise ConfigError(f"{what} needs about {format_bytes(needed)} of memory, more than the "
                          f"{format_bytes(free)} available on {device}.")


class SavedForBackward:
    """The storages autograd keeps for the backward while the context is active, by storage (a
    view and its base count once), parameters (``exclude``: tensors kept anyway) left out:
    ``with SavedForBackward(model.parameters()) as saved: loss = ...``, then ``saved.nbytes`` and
    ``saved.storages`` ({pointer: (bytes, "shape dtype" of the last tensor saved from it)})."""

    def __init__(self, exclude=()):
        self._exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self.storages: dict[int, tuple[int, str]] = {}

    def _pack(self, t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self._exclude:
            label = f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"
            self.storages[ptr] = (t.untyped_storage().nbytes(), label)
        return t

    def __enter__(self):
        import torch

        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self._hooks.__exit__(*exc)

    @property
    def nbytes(self) -> int:
        return sum(b for b, _ in self.storages.values())


def graph_capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph (False without CUDA), where a device
    sync is an error."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
