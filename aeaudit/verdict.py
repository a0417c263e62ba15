"""What a scan's verdict means: severities, the gate, the three outcomes and their exit codes.

This module is the one home of the rule; the audit result, the CLI and every report writer use it.

- **FAIL** (exit 1): verified findings at or above the gate exist. They are verified, so they stand
  even when the scan was cut short.
- **PASS** (exit 0): every planned check ran to completion and found nothing at or above the gate.
  A check that does not apply to the model (``skipped``) is not planned work.
- **INCONCLUSIVE** (exit 4): nothing at or above the gate, but some planned work was not done (the
  time limit or a signal cut it short). ``--inconclusive pass|fail`` maps it for users who want that.
- **ERROR** (exit 3): a check crashed and nothing at or above the gate was found.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

SEVERITIES = ("critical", "high", "warning")  # worst first
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
GATES = {"critical": ("critical",), "high": ("critical", "high"), "warning": SEVERITIES, "never": ()}
INCONCLUSIVE_AS = ("inconclusive", "pass", "fail")


class Outcome(str, Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"
    ERROR = "ERROR"


EXIT_PASS, EXIT_FAIL, EXIT_INPUT, EXIT_ERROR, EXIT_INCONCLUSIVE = 0, 1, 2, 3, 4
EXIT_CODES = {
    Outcome.PASS: EXIT_PASS,
    Outcome.FAIL: EXIT_FAIL,
    Outcome.ERROR: EXIT_ERROR,
    Outcome.INCONCLUSIVE: EXIT_INCONCLUSIVE,
}


def gated(severity: str | None, fail_on: str) -> bool:
    """Whether a finding of ``severity`` fails the gate ``--fail-on fail_on``."""
    return severity in GATES[fail_on]


def decide(severities: Iterable[str], complete: bool, errors: int, fail_on: str) -> Outcome:
    if any(gated(s, fail_on) for s in severities):
        return Outcome.FAIL
    if errors:
        return Outcome.ERROR
    return Outcome.PASS if complete else Outcome.INCONCLUSIVE


def exit_code(outcome: Outcome, inconclusive_as: str = "inconclusive") -> int:
    if outcome is Outcome.INCONCLUSIVE and inconclusive_as != "inconclusive":
        return EXIT_PASS if inconclusive_as == "pass" else EXIT_FAIL
    return EXIT_CODES[outcome]
