"""The terminal summary of a scan: verdict first, then the numbers behind it."""

from __future__ import annotations

import textwrap
from typing import Any

from rich.console import Console
from rich.table import Table

from .certification import certify_lines, outcome_kind, outcome_lines
from .fmt import regions_of

SEVERITY_STYLES = {"critical": "bold red", "high": "dark_orange", "warning": "yellow"}
OUTCOME_STYLES = {
    "certified": "bold bright_white on blue",  # a proof: never shown like a search PASS
    "pass": "bold green",
    "fail": "bold red",
    "inconclusive": "bold yellow",
    "error": "bold magenta",
}
BASIS_STYLES = {"certified": "bright_cyan", "pass": "green", "inconclusive": "yellow", "error": "magenta"}


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _auroc(v: Any) -> str:
    return "—" if v is None else f"{v:.3f}"  # 0.9999 must not print as 1


def render_summary(report: dict[str, Any], console: Console, max_rows: int = 10) -> None:
    kind = outcome_kind(report)
    console.print(report["verdict"], style=OUTCOME_STYLES[kind], markup=False, highlight=False)
    for line in outcome_lines(report):
        console.print(line, style=BASIS_STYLES.get(kind, ""), markup=False, highlight=False)
    if report["status"] != "complete" and kind != "inconclusive":
        console.print(
            "[yellow]status: incomplete — the budget or an interrupt cut the work short; results so far are kept[/]"
        )
    m, d, t = report["model"], report["data"], report["thresholds"]
    latent = m.get("latent_shape")
    console.print(
        f"model: {m['format']} · {m['n_parameters']:,} parameters · latent {latent if latent else 'none'} · "
        f"{'piecewise-linear' if m['piecewise_linear'] else 'smooth/other'} · {m['device']}"
    )
    console.print(
        f"data: {d['n_samples']} normal samples of shape {tuple(d['sample_shape'])} · domain {t['domain']['reason']}"
    )
    console.print(
        f"τ_min {t['tau_min']:.4g} · τ_op {t['tau_op']:.4g} ({t['tau_op_source']}) · "
        f"s {t['scale']:.4g} · far ≥ {t['min_distance']:.4g} ({t['min_distance_source']})"
    )

    _regions(report, console, max_rows)
    if kind not in ("certified", "pass"):  # a PASS said this under the verdict
        for line in certify_lines(report):
            console.print(line, markup=False, highlight=False)

    probes = Table(title="checks", show_lines=False)
    for col in ("probe", "status", "evaluations", "seconds", "note"):
        probes.add_column(col)
    for p in report["probes"]:
        probes.add_row(
            p["probe"],
            p["status"],
            str(p["evaluations"]),
            f"{p['seconds']:.1f}",
            textwrap.shorten(p["reason"], 120, placeholder=" …"),
        )
    console.print(probes)

    findings, counts = report["findings"], report.get("counts") or {}
    if findings:
        console.print(
            f"findings: {len(findings)} kept of {counts.get('verified', len(findings))} verified, per point "
            "in report.json (report.html lists them by region)"
        )

    rows = report.get("scorers", {}).get("table") or []
    if rows:
        table = Table(title="scorer comparison")
        with_anomalies = any(r.get("anomalies_auroc") is not None for r in rows)
        cols = [
            "scorer",
            "transferred detection",
            "AUROC findings",
            *(["AUROC anomalies"] if with_anomalies else []),
            "adaptive findings",
            "best d/s",
            "best score/τ",
            "verdict",
        ]
        for col in cols:
            table.add_column(col)
        for r in rows:
            rate = r.get("transferred_detection_rate")
            table.add_row(
                r["scorer"],
                "—" if rate is None else f"{100 * rate:.0f} %",
                _auroc(r.get("auroc")),
                *([_auroc(r.get("anomalies_auroc"))] if with_anomalies else []),
                _fmt(r.get("adaptive_findings")),
                _fmt(r.get("adaptive_best_distance_ratio")),
                _fmt(r.get("adaptive_best_loss_ratio")),
                r.get("verdict", ""),
            )
        console.print(table)
    for err in report["errors"]:
        console.print(f"[red]error: {err}[/]")


def _regions(report: dict[str, Any], console: Console, max_rows: int) -> None:
    """The blind regions, worst first: the table a reader meets right under the verdict."""
    regions = regions_of(report)
    if not regions:
        console.print("blind regions: none found within budget")
        return
    shown = regions[:max_rows]
    table = Table(
        title=f"blind regions ({len(shown)} of {len(regions)})"
        if len(regions) > len(shown)
        else f"blind regions ({len(regions)})"
    )
    cells = [
        [
            r.get("label", ""),
            r.get("severity", ""),
            r.get("summary", ""),
            str(r.get("witnesses", "")),
            _fmt(r.get("loss_ratio_min")),
            ", ".join(r.get("probes") or []),
        ]
        for r in shown
    ]
    for j, col in enumerate(("region", "severity", "what", "witnesses", "loss/τ_op", "found by")):
        numeric = col in ("region", "witnesses", "loss/τ_op")  # numbers are never cut; words may wrap
        table.add_column(col, no_wrap=numeric, min_width=max(len(row[j]) for row in cells) if numeric else None)
    for row, r in zip(cells, shown):
        table.add_row(*row, style=SEVERITY_STYLES.get(r.get("severity"), ""))
    console.print(table)
