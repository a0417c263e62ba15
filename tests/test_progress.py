"""Progress bars on a terminal: every probe and scorer runs with them drawn, and tasks of unknown
length (total=None) render. Non-terminal runs are silent, which the other tests cover."""

from __future__ import annotations

import io

from helpers import line_data, projection_ae
from rich.console import Console

import aeaudit
from aeaudit.probes import DEFAULT_PROBES
from aeaudit.progress import Reporter
from aeaudit.scorers import SCORERS


def _terminal_reporter() -> tuple[Reporter, io.StringIO]:
    buffer = io.StringIO()
    return Reporter(enabled=True, console=Console(file=buffer, force_terminal=True, width=100)), buffer


def test_a_task_of_unknown_length_renders():
    reporter, buffer = _terminal_reporter()
    with reporter.task("fit and calibrate", total=None) as task:
        task.advance()
    with reporter.task("search", total=4) as task:
        task.advance(4)
    assert "fit and calibrate" in buffer.getvalue() and "search" in buffer.getvalue()


def test_a_scan_with_progress_bars_drawn_runs_every_probe_and_scorer():
    reporter, buffer = _terminal_reporter()
    result = aeaudit.scan(
        projection_ae(),
        line_data(),
        effort="quick",
        probes=DEFAULT_PROBES,
        scorers=tuple(SCORERS),
        device="cpu",
        reporter=reporter,
    )
    assert not result.errors
    assert all(p["status"] != "error" for p in result.probes), result.probes
    rows = result.scorers["table"]
    assert [r["scorer"] for r in rows] == list(SCORERS)
    assert not any("error" in r["verdict"] for r in rows), rows
    assert "PGD" in buffer.getvalue()
