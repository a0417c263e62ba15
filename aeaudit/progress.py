"""Progress bars: rich on a terminal, silent with --quiet or when output is not a TTY."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class _Task:
    def __init__(self, progress, task_id):
        self._progress, self._id = progress, task_id

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._id, n)

    def update(self, **kwargs) -> None:
        if self._progress is not None:
            self._progress.update(self._id, **kwargs)


class Reporter:
    """Hands out progress tasks; a disabled reporter does nothing."""

    def __init__(self, enabled: bool | None = None, console=None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.console = console  # a rich Console; None: rich's own (stderr's terminal)

    @contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[_Task]:
        if not self.enabled:
            yield _Task(None, None)
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        # MofNCompleteColumn shows "?" for a task of unknown length (total=None)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=True,
            console=self.console,
        ) as progress:
            task_id = progress.add_task(description, total=total)
            yield _Task(progress, task_id)


SILENT = Reporter(enabled=False)
