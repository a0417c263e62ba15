"""JUnit XML for CI systems: one test case per check, a failure per check with gate-level findings.

The layout follows the common JUnit conventions that GitHub Actions reporters, GitLab and
Jenkins read: ``<testsuites>`` → ``<testsuite>`` (with ``<properties>``) → ``<testcase>``
holding at most one ``<failure>``, ``<error>`` or ``<skipped>``. A check that was skipped
is a skipped test, a check that crashed an error, and a check whose verified findings reach
the gate (``--fail-on``) a failure listing those findings.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ..verdict import GATES
from .atomic import write_text
from .fmt import normalise, num

MAX_LISTED = 50  # findings written out per test case; report.json has them all


def _finding_line(i: int, f: dict) -> str:
    return (f"#{i + 1} {f.get('severity')} {f.get('kind')}: loss {num(f.get('loss'))} ({num(f.get('loss_ratio'), 3)} × τ_op), "
            f"distance {num(f.get('distance'))} ({num(f.get('distance_ratio'), 3)} × s)")


def to_junit(report: dict[str, Any]) -> str:
    """The JUnit XML document for ``report`` (an ``AuditResult.to_dict()`` or a loaded report.json)."""
    report = normalise(report)
    fail_on = (report.get("gate") or {}).get("fail_on", "high")
    levels = GATES.get(fail_on, GATES["high"])
    findings = list(enumerate(report.get("findings") or []))
    probes = list(report.get("probes") or [])
    known = {p.get("probe") for p in probes}
    # findings of a check that is not in the list (should not happen) still get a test case
    probes += [{"probe": name, "kind": "search", "status": "complete"}
               for name in dict.fromkeys(f.get("probe") for _, f in findings) if name not in known]
    stats = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total_time = sum(float(p.get("seconds") or 0) for p in probes)

    suites = ET.Element("testsuites", name="aeaudit")
    suite = ET.SubElement(suites, "testsuite", name="aeaudit.scan")
    props = ET.SubElement(suite, "properties")
    t = report.get("thresholds") or {}
    for key, value in (("verdict", report.get("verdict")), ("status", report.get("status")),
                       ("fail_on", fail_on), ("exit_code", (report.get("gate") or {}).get("exit_code")),
                       ("seed", report.get("seed")), ("tau_min", t.get("tau_min")), ("tau_op", t.get("tau_op")),
                       ("scale", t.get("scale")), ("min_distance", t.get("min_distance")),
                       ("schema_version", report.get("schema_version"))):
        ET.SubElement(props, "property", name=key, value="" if value is None else str(value))

    for p in probes:
        name = str(p.get("probe"))
        case = ET.SubElement(suite, "testcase", classname=f"aeaudit.{p.get('kind', 'check')}", name=name,
                             time=f"{float(p.get('seconds') or 0):.3f}")
        stats["tests"] += 1
        mine = [(i, f) for i, f in findings if f.get("probe") == name]
        gated = [(i, f) for i, f in mine if f.get("severity") in levels]
        status, reason = p.get("status"), p.get("reason") or ""
        if gated:
            stats["failures"] += 1
            n_crit = sum(f.get("severity") == "critical" for _, f in gated)
            failure = ET.SubElement(case, "failure", type="blind-spot", message=(
                f"{len(gated)} verified finding(s) at or above --fail-on {fail_on}: "
                f"{n_crit} critical, {len(gated) - n_crit} high"))
            listed = [_finding_line(i, f) for i, f in gated[:MAX_LISTED]]
            if len(gated) > MAX_LISTED:
                listed.append(f"... and {len(gated) - MAX_LISTED} more (see report.json)")
            failure.text = "\n".join(listed)
        elif status == "error":
            stats["errors"] += 1
            ET.SubElement(case, "error", type="error", message=reason or "the check failed")
        elif status == "skipped":
            stats["skipped"] += 1
            ET.SubElement(case, "skipped", message=reason or "not applicable")
        out = [f"status: {status}" + (f" ({reason})" if reason else ""),
               f"evaluations: {p.get('evaluations', 0)}, findings: {len(mine)}"]
        gated_ids = {i for i, _ in gated}
        out += [_finding_line(i, f) for i, f in mine if i not in gated_ids][:MAX_LISTED]
        ET.SubElement(case, "system-out").text = "\n".join(out)

    for el in (suites, suite):
        el.set("tests", str(stats["tests"]))
        el.set("failures", str(stats["failures"]))
        el.set("errors", str(stats["errors"]))
        el.set("skipped", str(stats["skipped"]))
        el.set("time", f"{total_time:.3f}")
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def write_junit(report: dict[str, Any], path: str | Path) -> Path:
    return write_text(path, to_junit(report))
