"""The terminal summary of a scan: verdict first, then the numbers behind it."""
from __future__ import annotations

import textwrap
from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _auroc(v: Any) -> str:
    return "—" if v is None else f"{v:.3f}"  # 0.9999 must not print as 1


def render_summary(report: dict[str, Any], console: Console, max_rows: int = 10) -> None:
    gate = report["gate"]
    style = "bold red" if gate["failed"] else ("bold yellow" if report["errors"] else "bold green")
    console.print(f"[{style}]{report['verdict']}[/]")
    if report["status"] != "complete":
        console.print("[yellow]status: incomplete — the budget or an interrupt cut the work short; results so far are kept[/]")
    m, d, t = report["model"], report["data"], report["thresholds"]
    latent = m.get("latent_shape")
    console.print(f"model: {m['format']} · {m['n_parameters']:,} parameters · latent {latent if latent else 'none'} · "
                  f"{'piecewise-linear' if m['piecewise_linear'] else 'smooth/other'} · {m['device']}")
    console.print(f"data: {d['n_samples']} normal samples of shape {tuple(d['sample_shape'])} · "
                  f"domain {t['domain']['reason']}")
    console.print(f"τ_min {t['tau_min']:.4g} · τ_op {t['tau_op']:.4g} ({t['tau_op_source']}) · "
                  f"s {t['scale']:.4g} · far ≥ {t['min_distance']:.4g} ({t['min_distance_source']})")

    probes = Table(title="checks", show_lines=False)
    for col in ("probe", "status", "evaluations", "seconds", "note"):
        probes.add_column(col)
    for p in report["probes"]:
        probes.add_row(p["probe"], p["status"], str(p["evaluations"]), f"{p['seconds']:.1f}", textwrap.shorten(p["reason"], 120, placeholder=" …"))
    console.print(probes)

    findings = report["findings"]
    if findings:
        table = Table(title=f"findings (top {min(max_rows, len(findings))} of {len(findings)})")
        # fits 80 columns; the finding's kind and absolute distance are in report.json and report.html
        cells = [[str(i + 1), f["severity"], f["probe"], _fmt(f["loss"]), _fmt(f["loss_ratio"]), _fmt(f["distance_ratio"])]
                 for i, f in enumerate(findings[:max_rows])]
        for j, col in enumerate(("#", "severity", "probe", "loss", "loss/τ_op", "d/s")):
            numeric = col in ("#", "loss", "loss/τ_op", "d/s")  # numbers are never cut; words may be
            table.add_column(col, no_wrap=True, min_width=max(len(row[j]) for row in cells) if numeric else None)
        for row in cells:
            table.add_row(*row)
        console.print(table)
    else:
        console.print("findings: none found within budget")

    rows = report.get("scorers", {}).get("table") or []
    if rows:
        table = Table(title="scorer comparison")
        with_anomalies = any(r.get("anomalies_auroc") is not None for r in rows)
        cols = ["scorer", "transferred detection", "AUROC findings", *(["AUROC anomalies"] if with_anomalies else []),
                "adaptive findings", "best d/s", "best score/τ", "verdict"]
        for col in cols:
            table.add_column(col)
        for r in rows:
            rate = r.get("transferred_detection_rate")
            table.add_row(r["scorer"], "—" if rate is None else f"{100 * rate:.0f} %", _auroc(r.get("auroc")),
                          *([_auroc(r.get("anomalies_auroc"))] if with_anomalies else []),
                          _fmt(r.get("adaptive_findings")), _fmt(r.get("adaptive_best_distance_ratio")),
                          _fmt(r.get("adaptive_best_loss_ratio")), r.get("verdict", ""))
        console.print(table)
    for err in report["errors"]:
        console.print(f"[red]error: {err}[/]")
