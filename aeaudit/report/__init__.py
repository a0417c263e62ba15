"""Report writers: JSON (machines), terminal summary and HTML (people), JUnit and Markdown (CI).

The HTML, JUnit and Markdown writers live in their own modules (``html``, ``junit``,
``markdown``) and are imported where used, so writing report.json never loads matplotlib or Jinja2.
"""

from .json_report import load_report, read_json, strip_timings, to_json, write_json

__all__ = ["load_report", "read_json", "strip_timings", "to_json", "write_json"]
