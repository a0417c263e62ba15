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


def span(lo: Any, hi: Any) -> str:
    """``2.1–4.7`` (or one number when both ends agree), 3 significant digits."""
    a, b = num(lo, 3), num(hi, 3)
    return a if a == b else f"{a}–{b}"


def regions_of(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's blind regions; a report.json written before regions existed (schema 1.0) gets
    one region per finding, so every writer can lead with regions and gate on them alike."""
    if "regions" in report:
        return list(report.get("regions") or [])
    out = []
    for i, f in enumerate(report.get("findings") or []):
        d, lr = f.get("distance_ratio"), f.get("loss_ratio")
        summary = f"{f.get('kind')} finding of {f.get('probe')}"
        out.append(
            {
                "label": f"#{i + 1}",
                "kind": f.get("kind"),
                "severity": f.get("severity"),
                "description": f"{f.get('severity')} {summary}",
                "summary": summary,
                "witnesses": 1,
                "severity_counts": {f.get("severity"): 1},
                "distance_ratio_min": d,
                "distance_ratio_max": d,
                "loss_ratio_min": lr,
                "probes": [f.get("probe")],
                "witness": f,
            }
        )
    return out
