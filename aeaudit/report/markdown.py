"""A short Markdown summary of the audit, sized for a pull-request comment.

Text that a model or its files control (exception messages, file names, probe notes) is escaped:
a pull-request comment renders HTML, code fences, links and @mentions, and none of those may come
from a checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .atomic import write_text
from .certification import (
    SPACE_NAMES,
    STATES,
    box_text,
    examined,
    is_proven,
    outcome_kind,
    outcome_lines,
    percent,
    skipped_lines,
)
from .fmt import normalise, num, regions_of, span

TOP_REGIONS = 5
ICONS = {"certified": "🛡️", "pass": "✅", "fail": "❌", "inconclusive": "❔", "error": "⚠️"}


# Characters that would start HTML, a code span or fence, a link or image, emphasis, a table cell or a mention.
MARKDOWN_ESCAPES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    "`": "&#96;",
    "@": "&#64;",
    "\\": "\\\\",
    "|": "\\|",
    "[": "\\[",
    "]": "\\]",
    "*": "\\*",
    "_": "\\_",
    "~": "\\~",
    "!": "\\!",
}
_ESCAPE_TABLE = str.maketrans(MARKDOWN_ESCAPES)


def escape(value: Any) -> str:
    """``value`` as inert Markdown text on one line."""
    return " ".join(str(value).split()).translate(_ESCAPE_TABLE)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(escape(v) for v in row) + " |" for row in rows]
    return lines


def to_markdown(report: dict[str, Any]) -> str:
    """Verdict, the blind regions, the checks and (when compared) the scorers, in a few lines."""
    report = normalise(report)
    gate = report.get("gate") or {}
    kind = outcome_kind(report)
    lines = [f"### {ICONS[kind]} aeaudit: {escape(report.get('verdict', ''))}", ""]
    basis = outcome_lines(report, certify=False)  # the certify table below has the rest
    basis += [] if kind == "certified" else skipped_lines(report)
    lines += [f"- {'**Certified.** ' if kind == 'certified' else ''}{escape(basis[0])}"] if basis else []
    lines += [f"- {escape(line)}" for line in basis[1:]] + ([""] if basis else [])
    if report.get("status") != "complete" and kind != "inconclusive":
        lines += ["**Incomplete:** the time budget or an interrupt cut some work short; results so far are shown.", ""]
    regions = regions_of(report)
    if regions:
        top = [
            [
                r.get("label"),
                r.get("severity"),
                r.get("summary"),
                num(r.get("witnesses")),
                span(r.get("distance_ratio_min"), r.get("distance_ratio_max")),
                num(r.get("loss_ratio_min"), 3),
                ", ".join(r.get("probes") or []),
            ]
            for r in regions[:TOP_REGIONS]
        ]
        lines += [f"**Blind regions** ({min(TOP_REGIONS, len(regions))} of {len(regions)}):", ""]
        lines += _table(
            ["region", "severity", "what", "witnesses", "distance / s", "lowest loss / τ_op", "found by"], top
        ) + [""]
    certified = [
        [SPACE_NAMES[space], box_text((r.get("region") or {}).get("low"), (r.get("region") or {}).get("high"))]
        + [percent((r.get("shares") or {}).get(state)) for state in STATES]
        + ["proven" if is_proven(r) else "not proven"]
        for space, r in examined(report)
    ]
    if certified:
        lines += _table(["certify region", "box", *STATES, "result"], certified) + [""]
    findings = report.get("findings") or []
    per_probe: dict[str, int] = {}
    for f in findings:
        per_probe[f.get("probe")] = per_probe.get(f.get("probe"), 0) + 1
    rows = [
        [p.get("probe"), p.get("status"), per_probe.get(p.get("probe"), 0), p.get("reason") or ""]
        for p in report.get("probes") or []
    ]
    if rows:
        lines += _table(["check", "status", "findings", "note"], rows) + [""]
    table = (report.get("scorers") or {}).get("table") or []
    if table:
        srows = [
            [
                r.get("scorer"),
                num(r.get("transferred_detection_rate"), 3),
                num(r.get("adaptive_findings")),
                r.get("verdict", ""),
            ]
            for r in table
        ]
        lines += _table(["scorer", "detects recon findings", "adaptive findings", "verdict"], srows) + [""]
    for err in report.get("errors") or []:
        lines.append(f"- error: {escape(err)}")
    t = report.get("thresholds") or {}
    lines += [
        f"<sub>τ_min {num(t.get('tau_min'))} · τ_op {num(t.get('tau_op'))} · s {num(t.get('scale'))} · "
        f"δ {num(t.get('min_distance'))} · gate --fail-on {escape(gate.get('fail_on'))} · seed {escape(report.get('seed'))} · "
        f"aeaudit {escape((report.get('tool') or {}).get('version', ''))} · per-point findings: report.json · "
        "full report: report.html</sub>",
        "",
    ]
    return "\n".join(lines)


def write_markdown(report: dict[str, Any], path: str | Path) -> Path:
    return write_text(path, to_markdown(report))
