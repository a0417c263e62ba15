"""Shared by the report writers: the JSON-normal form of a report and numbers for people."""
from __future__ import annotations

import json
import math
from typing import Any

from .json_report import to_json


def normalise(report: dict[str, Any]) -> dict[str, Any]:
    """The report exactly as it reads back from report.json (numpy → Python, inf → "inf"), so a
    writer gives the same output at scan time and from the saved file."""
    return json.loads(to_json(report))


def num(value: Any, digits: int = 4) -> str:
    """A number from report.json for people: 4 significant digits, ∞ for "inf", — for missing."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    return f"{v:.{digits}g}"
