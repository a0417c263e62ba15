"""JUnit XML for CI systems: one test case per blind region, then one per check.

The layout follows the common JUnit conventions that GitHub Actions reporters, GitLab and
Jenkins read: ``<testsuites>`` → ``<testsuite>`` (with ``<properties>``) → ``<testcase>``
holding at most one ``<failure>``, ``<error>`` or ``<skipped>``. Two suites:

- ``aeaudit.regions``: one test case per blind region, worst first. A region whose severity
  reaches the gate (``--fail-on``) is a failure naming the region, its extent and its
  representative witness; a region below the gate (a warning under the default gate) passes
  with the same facts in ``<system-out>``. When no region reaches the gate, one more case
  (``no blind region at or above the gate``) says on what evidence: passing for a PASS (a
  certified PASS names the proven boxes), skipped with the reason for INCONCLUSIVE and ERROR.
  The suite's properties carry ``outcome``, ``certified`` and ``certification``.
- ``aeaudit.checks``: one test case per check. A check that did not apply is skipped, one that
  crashed an error; otherwise it passes, and its ``<system-out>`` says what it found and in
  which regions. Findings fail only through their regions, so a blind spot is counted once.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ..verdict import GATES
from .atomic import write_text
from .certification import certify_lines, outcome_kind, outcome_lines, outcome_of
from .fmt import normalise, num, regions_of, span

CLEAR_CASE = "no blind region at or above the gate"


def _witness_line(f: dict) -> str:
    return (
        f"representative witness: {f.get('severity')} {f.get('kind')} from {f.get('probe')}, "
        f"loss {num(f.get('loss'))} ({num(f.get('loss_ratio'), 3)} × τ_op), "
        f"distance {num(f.get('distance'))} ({num(f.get('distance_ratio'), 3)} × s)"
    )


def _region_text(r: dict) -> str:
    split = ", ".join(f"{n} {s}" for s, n in (r.get("severity_counts") or {}).items() if n)
    return "\n".join(
        [
            f"{r.get('label')}: {r.get('description')}",
            f"witnesses: {r.get('witnesses')} ({split})",
            f"distance / s: {span(r.get('distance_ratio_min'), r.get('distance_ratio_max'))}; "
            f"lowest loss / τ_op: {num(r.get('loss_ratio_min'), 3)}",
            f"found by: {', '.join(r.get('probes') or [])}",
            _witness_line(r.get("witness") or {}),
        ]
    )


class _Suite:
    """One ``<testsuite>`` and its counts."""

    def __init__(self, parent: ET.Element, name: str):
        self.element = ET.SubElement(parent, "testsuite", name=name)
        self.stats = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        self.time = 0.0

    def case(self, classname: str, name: str, seconds: float = 0.0) -> ET.Element:
        self.stats["tests"] += 1
        self.time += seconds
        return ET.SubElement(self.element, "testcase", classname=classname, name=name, time=f"{seconds:.3f}")

    def mark(self, case: ET.Element, outcome: str, **attributes: str) -> ET.Element:
        self.stats[{"failure": "failures", "error": "errors", "skipped": "skipped"}[outcome]] += 1
        return ET.SubElement(case, outcome, **attributes)


def to_junit(report: dict[str, Any]) -> str:
    """The JUnit XML document for ``report`` (an ``AuditResult.to_dict()`` or a loaded report.json)."""
    report = normalise(report)
    fail_on = (report.get("gate") or {}).get("fail_on", "high")
    levels = GATES.get(fail_on, GATES["high"])
    regions = regions_of(report)
    findings = report.get("findings") or []
    probes = list(report.get("probes") or [])
    known = {p.get("probe") for p in probes}
    # findings of a check that is not in the list (should not happen) still get a test case
    probes += [
        {"probe": name, "kind": "search", "status": "complete"}
        for name in dict.fromkeys(f.get("probe") for f in findings)
        if name not in known
    ]

    suites = ET.Element("testsuites", name="aeaudit")
    region_suite = _Suite(suites, "aeaudit.regions")
    props = ET.SubElement(region_suite.element, "properties")
    t = report.get("thresholds") or {}
    for key, value in (
        ("verdict", report.get("verdict")),
        ("outcome", outcome_of(report)),
        ("certified", "true" if outcome_kind(report) == "certified" else "false"),
        ("certification", json.dumps(report.get("certification") or {}, separators=(",", ":"))),
        ("status", report.get("status")),
        ("fail_on", fail_on),
        ("exit_code", (report.get("gate") or {}).get("exit_code")),
        ("seed", report.get("seed")),
        ("tau_min", t.get("tau_min")),
        ("tau_op", t.get("tau_op")),
        ("scale", t.get("scale")),
        ("min_distance", t.get("min_distance")),
        ("schema_version", report.get("schema_version")),
    ):
        ET.SubElement(props, "property", name=key, value="" if value is None else str(value))
    for r in regions:
        case = region_suite.case(f"aeaudit.region.{r.get('kind')}", f"{r.get('label')} {r.get('summary')}")
        text = _region_text(r)
        if r.get("severity") in levels:
            failure = region_suite.mark(
                case,
                "failure",
                type="blind-region",
                message=(
                    f"{r.get('label')}: {r.get('description')} ({r.get('witnesses')} witness(es)) "
                    f"at or above --fail-on {fail_on}"
                ),
            )
            failure.text = text
        else:
            ET.SubElement(case, "system-out").text = f"below the gate --fail-on {fail_on}\n{text}"
    if not any(r.get("severity") in levels for r in regions):
        _clear_case(region_suite, report)

    check_suite = _Suite(suites, "aeaudit.checks")
    for p in probes:
        name = str(p.get("probe"))
        case = check_suite.case(f"aeaudit.{p.get('kind', 'check')}", name, float(p.get("seconds") or 0))
        status, reason = p.get("status"), p.get("reason") or ""
        if status == "error":
            check_suite.mark(case, "error", type="error", message=reason or "the check failed")
        elif status == "skipped":
            check_suite.mark(case, "skipped", message=reason or "not applicable")
        mine = [f for f in findings if f.get("probe") == name]
        extra = certify_lines(report) if name == "certify" else []
        in_regions = sorted({(f.get("details") or {}).get("region") for f in mine} - {None})
        ET.SubElement(case, "system-out").text = "\n".join(
            [
                f"status: {status}" + (f" ({reason})" if reason else ""),
                f"evaluations: {p.get('evaluations', 0)}, findings kept: {len(mine)}"
                + (f", in regions {', '.join(f'R{i}' for i in in_regions)}" if in_regions else ""),
                *extra,
            ]
        )

    totals = {k: region_suite.stats[k] + check_suite.stats[k] for k in region_suite.stats}
    for suite in (region_suite, check_suite):
        _set_counts(suite.element, suite.stats, suite.time)
    _set_counts(suites, totals, region_suite.time + check_suite.time)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _clear_case(suite: _Suite, report: dict[str, Any]) -> None:
    """The case that passes when no region reaches the gate, and says on what evidence: a proof
    (certified PASS) or a search (PASS). When the scan was cut short or a check crashed, that claim
    was not established: the case is skipped with the reason, so a CI view does not show it green."""
    case = suite.case("aeaudit.region", CLEAR_CASE)
    kind, lines = outcome_kind(report), outcome_lines(report)
    if kind in ("inconclusive", "error"):
        suite.mark(
            case, "skipped", message=f"{outcome_of(report)}: not established. {lines[0] if lines else ''}".strip()
        )
    ET.SubElement(case, "system-out").text = "\n".join([str(report.get("verdict", "")), *lines])


def _set_counts(element: ET.Element, stats: dict[str, int], seconds: float) -> None:
    for key, value in stats.items():
        element.set(key, str(value))
    element.set("time", f"{seconds:.3f}")


def write_junit(report: dict[str, Any], path: str | Path) -> Path:
    return write_text(path, to_junit(report))
