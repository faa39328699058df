"""What the bad-input tests of the scans share."""

from __future__ import annotations


def one_sentence(exc: Exception) -> str:
    """The message of ``exc``, checked to be one sentence (one line, one full stop at the end)."""
    msg = str(exc)
    assert "\n" not in msg and msg.endswith(".") and msg.count(". ") == 0, msg
    return msg
