"""Checks: a claim, the tolerance it is held to, what was measured, and the outcome.

A section of a report returns a list of :class:`Check`; the report lists them in one
table at the top and exits non-zero under ``--strict`` when one has failed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

OUTCOMES = ("pass", "fail", "not run")
# What a check holds to account: the software's own contract (a fail is a fault of the software), or a
# claim of the paper or of its theory (a fail is a finding: the software worked, the claim did not hold here).
KINDS = ("software", "claim")


@dataclass
class Check:
    """One verdict.

    claim: what the paper (or the specification) says, in one sentence;
    tolerance: how close counts as agreement, in words and numbers;
    measured: what this run measured, with the numbers;
    outcome: "pass", "fail" or "not run";
    note: a plain sentence where the outcome needs one (why it failed, how to run it);
    kind: "software" (the code's own contract) or "claim" (the paper's or its theory's; a failed
    claim is reported as a *finding*, apart from the software's failures).
    """

    claim: str
    tolerance: str
    measured: str
    outcome: str
    note: str = ""
    section: str = ""
    kind: str = "software"

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def finding(self) -> bool:
        """A claim of the paper or its theory that this run measured and that did not hold."""
        return self.outcome == "fail" and self.kind == "claim"

    @classmethod
    def judged(cls, claim: str, tolerance: str, measured: str, ok: bool | None, note: str = "",
               kind: str = "software") -> Check:
        """A check whose outcome is ``ok`` (True: pass, False: fail, None: not run)."""
        outcome = "not run" if ok is None else ("pass" if ok else "fail")
        return cls(claim=claim, tolerance=tolerance, measured=measured, outcome=outcome, note=note, kind=kind)

    @classmethod
    def not_run(cls, claim: str, tolerance: str, how: str, kind: str = "software") -> Check:
        """A check this run could not make; ``how`` says what would make it."""
        return cls(claim=claim, tolerance=tolerance, measured="-", outcome="not run", note=how, kind=kind)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Check:
        fields = {k: data.get(k, "") for k in ("claim", "tolerance", "measured", "outcome", "note", "section")}
        return cls(**fields, kind=data.get("kind") or "software")


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


def count_failures(checks) -> dict[str, int]:
    """The failed checks split: {"software failure": n, "finding": n} (Check objects or JSON dicts)."""
    counts = {"software failure": 0, "finding": 0}
    for c in checks:
        c = c.to_json() if isinstance(c, Check) else c
        if c["outcome"] == "fail":
            counts["finding" if is_finding(c) else "software failure"] += 1
    return counts


def is_finding(check: dict) -> bool:
    """A check's JSON dict: a failed claim of the paper or its theory (the software worked)."""
    return check["outcome"] == "fail" and check.get("kind") == "claim"


def shown_outcome(check: dict) -> str:
    """The outcome as the report shows it: "finding" for a failed claim, else the outcome."""
    return "finding" if is_finding(check) else check["outcome"]


__all__ = ["KINDS", "OUTCOMES", "Check", "Figure", "count_failures", "count_outcomes", "is_finding", "shown_outcome"]
