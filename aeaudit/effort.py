"""How much work a scan does, and what may stop it early.

The amount of search is set in *work* (starts, steps, grid points, draws per probe), so the same
model, data, seed and effort give the same findings on a fast or a slow, idle or busy machine.
``--effort`` picks one of three presets that each probe translates into its own settings
(``Probe.effort_presets``); ``--probe-settings`` overrides single values.

Two things may still cut work short, and both leave the scan *incomplete* (never a PASS):
a wall-clock safety cap (``--time-limit``) and a signal (Ctrl-C / SIGTERM). Loops ask
:meth:`Stop.reason` between batches, so a scan stops within one batch of work of either.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

EFFORTS = ("quick", "standard", "thorough")
DEFAULT_EFFORT = "standard"


class Interrupts:
    """Signals received while :meth:`armed`: the first one asks the scan to stop and keep what it
    found; a second one aborts at once (exit code 128 + signal number), as a user pressing Ctrl-C
    twice expects."""

    def __init__(self) -> None:
        self.received: str | None = None

    def _handle(self, signum: int, _frame) -> None:
        if self.received is not None:
            os._exit(128 + signum)
        self.received = signal.Signals(signum).name

    @contextmanager
    def armed(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[Interrupts]:
        self.received = None
        previous = {s: signal.signal(s, self._handle) for s in signals}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.received = None


INTERRUPTS = Interrupts()


class Stop:
    """What ends work early: the time limit (``seconds``; ``None`` = none) or a received signal."""

    def __init__(self, seconds: float | None = None, clock=time.monotonic):
        self.seconds = seconds
        self.clock = clock
        self.deadline = None if seconds is None else clock() + seconds
        self.interrupted: str | None = None

    def interrupt(self, what: str) -> None:
        """Record an interrupt seen as an exception (Ctrl-C in a library call without the CLI's handler)."""
        self.interrupted = what

    def reason(self) -> str | None:
        """Why to stop now, or ``None`` to go on."""
        if INTERRUPTS.received is not None or self.interrupted is not None:
            return f"interrupted ({INTERRUPTS.received or self.interrupted})"
        if self.deadline is not None and self.clock() >= self.deadline:
            return f"stopped by the time limit ({self.seconds:g} s)"
        return None

    def reached(self) -> bool:
        return self.reason() is not None


NEVER = Stop(None)
