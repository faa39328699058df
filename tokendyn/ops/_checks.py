"""What every scan's input check shares: the accepted dtypes, a shape as text, and the check
that each given tensor is a real floating tensor (on one device, where asked)."""

from __future__ import annotations

import torch

from ..errors import ScanInputError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def shape_str(t: torch.Tensor) -> str:
    """``(2, 3, 4)``: a tensor's shape as the error messages write it."""
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_tensors(where: str, named: dict, one_device: bool = True) -> None:
    """Every non-None entry of ``named`` is a torch.Tensor of a real floating dtype and, with
    ``one_device``, all sit on one device; :class:`ScanInputError` naming ``where`` otherwise."""
    for name, t in named.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise ScanInputError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}.")
        if t.dtype not in FLOAT_DTYPES:
            raise ScanInputError(
                f"{where}: {name} has dtype {t.dtype}; expected a real floating dtype "
                "(float16, bfloat16, float32 or float64)."
            )
    devices = {t.device for t in named.values() if t is not None}
    if one_device and len(devices) > 1:
        raise ScanInputError(f"{where}: all tensors must be on one device, got {sorted(str(d) for d in devices)}.")
