"""Input checks of the Mamba-2 (SSD) scan, its one-token step and its matrix form.

Each check raises :class:`~tokendyn.errors.ScanInputError` (the error of bad scan tensors, as
for ``selective_scan``) with one sentence naming the tensor, the shape it must have and the
shape it has.
"""

from __future__ import annotations

import torch

from ..errors import ScanInputError
from ._checks import check_tensors, shape_str


def _check_groups(where: str, heads: int, B: torch.Tensor, group_axis: int, layout: str) -> None:
    """B has as many dims as ``layout`` names, and its group count divides ``heads``."""
    if B.dim() != len(layout.split(",")):
        raise ScanInputError(f"{where}: B must be ({layout}), got shape {shape_str(B)}.")
    groups = B.shape[group_axis]
    if groups == 0 or heads % groups != 0:
        raise ScanInputError(
            f"{where}: the head count {heads} is not divisible by n_groups {groups} "
            f"(B has shape {shape_str(B)}, n_groups is its axis {group_axis})."
        )


def _check_expected(where: str, named: dict, expect: dict, context: str) -> None:
    for name, shape in expect.items():
        t = named.get(name)
        if t is not None and tuple(t.shape) != shape:
            raise ScanInputError(f"{where}: {name} must have shape {shape}, got {shape_str(t)} ({context}).")


def check_ssd_inputs(x, dt, A, B, C, D=None, initial_state=None, where: str = "ssd_scan") -> None:
    """Raise :class:`ScanInputError` with one sentence if the scan's tensors break the contract.

    x: (batch, length, heads, head_dim); dt: (batch, length, heads); A: (heads,);
    B, C: (batch, length, n_groups, state) with n_groups dividing heads; D: (heads,);
    initial_state: (batch, heads, head_dim, state). x may be None (the matrix form has none):
    then dt gives batch, length and heads.
    """
    named = {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "initial_state": initial_state}
    check_tensors(where, {k: v for k, v in named.items() if k != "x" or v is not None})
    if x is not None:
        if x.dim() != 4:
            raise ScanInputError(f"{where}: x must be (batch, length, heads, head_dim), got shape {shape_str(x)}.")
        batch, length, heads, hdim = x.shape
    else:
        if dt.dim() != 3:
            raise ScanInputError(f"{where}: dt must be (batch, length, heads), got shape {shape_str(dt)}.")
        batch, length, heads = dt.shape
        hdim = None
    _check_groups(where, heads, B, 2, "batch, length, n_groups, state")
    groups, state = B.shape[2], B.shape[3]
    expect = {
        "dt": (batch, length, heads),
        "A": (heads,),
        "B": (batch, length, groups, state),
        "C": (batch, length, groups, state),
        "D": (heads,),
    }
    if hdim is not None:
        expect["initial_state"] = (batch, heads, hdim, state)
    shape_of = (f"x is (batch={batch}, length={length}, heads={heads}, head_dim={hdim})" if hdim is not None
                else f"dt is (batch={batch}, length={length}, heads={heads})")
    _check_expected(where, named, expect, f"{shape_of}, B has n_groups={groups}, state={state}")


def check_step_inputs(state, x, dt, A, B, C, D=None, where: str = "ssd_step") -> None:
    """The one-token step's tensors: state (batch, heads, head_dim, state_size);
    x (batch, heads, head_dim); dt (batch, heads); A, D (heads,); B, C (batch, n_groups, state_size)."""
    named = {"state": state, "x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D}
    check_tensors(where, named)
    if state.dim() != 4:
        raise ScanInputError(f"{where}: state must be (batch, heads, head_dim, state), got shape {shape_str(state)}.")
    batch, heads, hdim, size = state.shape
    _check_groups(where, heads, B, 1, "batch, n_groups, state")
    groups = B.shape[1]
    expect = {
        "x": (batch, heads, hdim),
        "dt": (batch, heads),
        "A": (heads,),
        "B": (batch, groups, size),
        "C": (batch, groups, size),
        "D": (heads,),
    }
    _check_expected(where, named, expect,
                    f"state is (batch={batch}, heads={heads}, head_dim={hdim}, state={size}), "
                    f"B has n_groups={groups}")
