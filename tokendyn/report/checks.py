"""Checks: a claim, the tolerance it is held to, what was measured, and the outcome.

A section of a report returns a list of :class:`Check`; the report lists them in one
table at the top and exits non-zero under ``--strict`` when one has failed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

OUTCOMES = ("pass", "fail", "not run")


@dataclass
class Check:
    """One verdict.

    claim: what the paper (or the specification) says, in one sentence;
    tolerance: how close counts as agreement, in words and numbers;
    measured: what this run measured, with the numbers;
    outcome: "pass", "fail" or "not run";
    note: a plain sentence where the outcome needs one (why it failed, how to run it).
    """

    claim: str
    tolerance: str
    measured: str
    outcome: str
    note: str = ""
    section: str = ""

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")

    @classmethod
    def judged(cls, claim: str, tolerance: str, measured: str, ok: bool | None, note: str = "") -> Check:
        """A check whose outcome is ``ok`` (True: pass, False: fail, None: not run)."""
        outcome = "not run" if ok is None else ("pass" if ok else "fail")
        return cls(claim=claim, tolerance=tolerance, measured=measured, outcome=outcome, note=note)

    @classmethod
    def not_run(cls, claim: str, tolerance: str, how: str) -> Check:
        """A check this run could not make; ``how`` says what would make it."""
        return cls(claim=claim, tolerance=tolerance, measured="-", outcome="not run", note=how)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Check:
        return cls(**{k: data.get(k, "") for k in ("claim", "tolerance", "measured", "outcome", "note", "section")})


@dataclass
class Figure:
    """A figure file of a report (path relative to the report's directory) and its caption."""

    path: str
    caption: str = ""

    def to_json(self) -> dict:
        return {"path": self.path, "caption": self.caption}


def count_outcomes(checks) -> dict[str, int]:
    """{"pass": n, "fail": n, "not run": n} over Check objects or their JSON dicts."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for c in checks:
        counts[c.outcome if isinstance(c, Check) else c["outcome"]] += 1
    return counts


__all__ = ["OUTCOMES", "Check", "Figure", "count_outcomes"]
