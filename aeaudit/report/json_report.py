"""``report.json``: the machine-readable audit (schema in docs/report-schema.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .atomic import write_text

SCHEMA_VERSION = "2.0"
TIMING_KEYS = ("timings", "seconds")
# what a report.json must hold for the writers to render it: key → type
REQUIRED = {
    "verdict": str,
    "status": str,
    "gate": dict,
    "settings": dict,
    "model": dict,
    "data": dict,
    "thresholds": dict,
    "probes": list,
    "findings": list,
    "counts": dict,
}


def _clean(obj: Any) -> Any:
    """JSON-safe: numpy → Python, non-finite floats → strings ("inf", "nan")."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def to_json(result_dict: dict[str, Any]) -> str:
    return json.dumps(_clean(result_dict), indent=1, sort_keys=False, allow_nan=False)


def write_json(result, path: str | Path) -> Path:
    """Write ``result`` (an AuditResult or its dict) to ``path`` atomically."""
    data = result if isinstance(result, dict) else result.to_dict()
    return write_text(path, to_json(data))


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def load_report(path: str | Path) -> dict[str, Any]:
    """A saved report.json, checked to be one this aeaudit can render (else :class:`InputError`)."""
    path = Path(path)
    try:
        data = read_json(path)
    except OSError as exc:
        raise InputError(
            f"{path}: cannot read it ({exc.strerror or exc}); give the report.json that `aeaudit scan` wrote"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); give the report.json that `aeaudit scan` wrote") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if not isinstance(version, str):
        raise InputError(f"{path}: no schema_version, so not an aeaudit report.json")
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise InputError(
            f"{path}: schema_version {version} is not readable by this aeaudit "
            f"(reads {SCHEMA_VERSION.split('.')[0]}.x); use the aeaudit that wrote it"
        )
    wrong = [f"{key} ({kind.__name__})" for key, kind in REQUIRED.items() if not isinstance(data.get(key), kind)]
    if wrong:
        raise InputError(
            f"{path}: malformed report.json: missing or mistyped {', '.join(wrong)}; "
            "give the report.json that `aeaudit scan` wrote"
        )
    return data


def strip_timings(obj: Any) -> Any:
    """The report without wall-clock fields, for comparing runs (same seed → same report)."""
    if isinstance(obj, dict):
        return {k: strip_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [strip_timings(v) for v in obj]
    return obj
