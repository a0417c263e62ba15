"""Wall-clock budgets: searches stop on time and report what they found so far."""
from __future__ import annotations

import time


class Budget:
    """A deadline. ``share(fraction)`` hands a sub-budget to one probe; ``None`` seconds = unlimited."""

    def __init__(self, seconds: float | None, clock=time.monotonic):
        self.clock = clock
        start = clock()
        self.seconds = seconds
        self.deadline = None if seconds is None else start + max(0.0, seconds)

    def remaining(self) -> float:
        return float("inf") if self.deadline is None else max(0.0, self.deadline - self.clock())

    def expired(self) -> bool:
        return self.deadline is not None and self.clock() >= self.deadline

    def share(self, fraction: float) -> "Budget":
        if self.deadline is None:
            return Budget(None, self.clock)
        return Budget(self.remaining() * fraction, self.clock)
