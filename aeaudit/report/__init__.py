"""Report writers: JSON (machines), terminal summary (people at a shell)."""
from .json_report import read_json, strip_timings, to_json, write_json

__all__ = ["read_json", "strip_timings", "to_json", "write_json"]
