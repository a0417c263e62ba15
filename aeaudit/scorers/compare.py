"""Gap comparison of the selected scorers (filled in by the scorer work)."""
from __future__ import annotations

from typing import Any


def compare_scorers(state, findings, budget) -> dict[str, Any]:
    return {}
