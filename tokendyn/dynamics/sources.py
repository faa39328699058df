"""Where a simulation's parameters and initial tokens come from.

Exactly one parameter source: the 1-D system (μ = S_Cᵀ S_B, S_Δ, a > 0, b_Δ), a JSON parameter
file (S_B, S_C, S_Delta, b_Delta, a or A), or random parameters of a given D and N. The initial
tokens x(0): listed (1-D systems only) or L draws of N(0, 1). ``tokendyn simulate`` builds one
:class:`SimulationSource` from its options; the checks and their one-sentence errors (which name
the command's flags) live here, with the system they build.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, DataError
from .vector_field import TokenSystem

DEFAULT_TOKENS = 8


def parse_tokens(text: str) -> list[float]:
    """``"1,-0.5,0.3"`` → [1.0, -0.5, 0.3]: finite numbers, none missing ("1,,2" is refused)."""
    parts = text.replace(" ", "").split(",")
    if parts == [""]:
        raise DataError("--x0 must hold at least one number, got an empty list.")
    if "" in parts:       # "1,,2" is a typo, never a silent [1, 2]
        raise DataError(f"--x0 has an empty entry at position {parts.index('') + 1}: {text!r}.")
    try:
        vals = [float(v) for v in parts]
    except ValueError:
        raise DataError(f"--x0 must be comma-separated numbers, got {text!r}.") from None
    bad = [i + 1 for i, v in enumerate(vals) if not math.isfinite(v)]
    if bad:
        raise DataError(f"--x0 must hold finite numbers only; entry {bad[0]} of {text!r} is {parts[bad[0] - 1]}.")
    return vals


def load_params(path: Path) -> dict:
    """The JSON object of a parameter file, read as text (never unpickled)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"the parameter file {path} is not a text (JSON) file.") from None
    except OSError as exc:
        raise DataError(f"cannot read the parameter file {path}: {exc.strerror or exc}.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"the parameter file {path} is not valid JSON ({exc.msg} at line {exc.lineno}).") from None


@dataclass(frozen=True)
class SimulationSource:
    """One simulation's parameter source and initial tokens, checked on construction.

    mu, s_delta, a, b_delta: the 1-D system (all of the first three, or none); params: a parameter
    file; random with dim (D) and state (N): random parameters; seed: of the random parameters and
    tokens; x0: listed 1-D tokens (text, as on the command line); tokens: L random tokens.
    """

    mu: float | None = None
    s_delta: float | None = None
    a: float | None = None
    b_delta: float = 0.0
    params: Path | None = None
    random: bool = False
    dim: int | None = None
    state: int | None = None
    seed: int = 0
    x0: str | None = None
    tokens: int | None = None

    def __post_init__(self) -> None:
        one_d = [v is not None for v in (self.mu, self.s_delta, self.a)]
        if sum([any(one_d), self.params is not None, self.random]) != 1:
            raise ConfigError("choose exactly one parameter source: --mu/--s-delta/--a, --params FILE or --random.")
        if any(one_d) and not all(one_d):
            raise ConfigError("the 1-D system needs all of --mu, --s-delta and --a.")
        if (self.dim is not None or self.state is not None) and not self.random:
            raise ConfigError("--dim and --state go with --random only.")
        if self.x0 is not None and self.tokens is not None:
            raise ConfigError("give --x0 or --tokens, not both.")
        if self.random and (self.dim is None or self.state is None):
            raise ConfigError("--random needs --dim D and --state N.")

    @property
    def one_dim(self) -> bool:
        """Whether the source is the 1-D system given by μ, S_Δ and a."""
        return self.mu is not None

    def system(self) -> TokenSystem:
        """The TokenSystem this source names (random draws use ``seed``)."""
        if self.one_dim:
            if self.a <= 0:
                raise DataError(f"decay --a must be positive, got {self.a}.")
            return TokenSystem.one_dim(self.mu, self.s_delta, self.a, self.b_delta)
        if self.params is not None:
            return TokenSystem.from_params(load_params(self.params))
        return TokenSystem.random(self.dim, self.state, self.seed)

    def initial_tokens(self, system: TokenSystem, check=None) -> torch.Tensor:
        """x(0): (L, D) float64, from ``x0`` (1-D systems) or L = ``tokens`` (default 8) draws of
        N(0, 1) with seed ``seed + 1``. ``check(tokens, dim, state)``, where given, refuses a size
        before the tokens are drawn."""
        if self.x0 is not None:
            vals = parse_tokens(self.x0)
            if system.dim != 1:
                raise DataError(f"--x0 gives 1-D tokens but the system has D={system.dim}; use --tokens L.")
            return torch.tensor(vals, dtype=torch.float64)[:, None]
        n = self.tokens or DEFAULT_TOKENS
        if check is not None:
            check(n, system.dim, system.state)
        g = torch.Generator().manual_seed(self.seed + 1)
        return torch.randn(n, system.dim, generator=g, dtype=torch.float64)
