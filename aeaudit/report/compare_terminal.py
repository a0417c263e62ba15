"""The terminal table of ``aeaudit compare``: original vs hardened."""

from __future__ import annotations

from typing import Any


def _scorer_value(summary: dict[str, Any], name: str, key: str) -> Any:
    return next((row.get(key) for row in summary["scorers"] if row.get("scorer") == name), None)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _searched(summary: dict[str, Any], name: str) -> str | None:
    """Adaptive findings against ``name``, with the evaluations behind them and a mark when cut short."""
    search = summary.get("adaptive", {}).get(name) or {}
    if search.get("findings") is None:
        return None
    return f"{search['findings']} in {search['evaluations']:,} evaluations" + (
        "" if search["complete"] else " (cut short)"
    )


def render_compare(result: dict[str, Any], console) -> None:
    """A short terminal table: original vs hardened."""
    from rich.table import Table

    style = {False: "bold red", True: "bold green"}.get(result["closed"], "bold yellow")
    console.print(f"[{style}]{result['verdict']}[/]")
    o, h = result["original"], result["hardened"]
    table = Table(title=f"original vs hardened ({result['hardening']['method'] or 'unknown method'})")
    for col in ("", "original", "hardened"):
        table.add_column(col)
    rows = [
        ("verdict", o["verdict"].split(":")[0], h["verdict"].split(":")[0]),
        ("critical findings", o["counts"].get("critical", 0), h["counts"].get("critical", 0)),
        ("high findings", o["counts"].get("high", 0), h["counts"].get("high", 0)),
        ("certificates", o["certificates"], h["certificates"]),
        ("τ_min / τ_op", f"{o['tau_min']:.3g} / {o['tau_op']:.3g}", f"{h['tau_min']:.3g} / {h['tau_op']:.3g}"),
    ]
    names = sorted({r["scorer"] for r in o["scorers"]} | {r["scorer"] for r in h["scorers"]})
    for name in names:
        rows.append((f"adaptive findings vs {name}", _searched(o, name), _searched(h, name)))
    for name in names:
        a, b = _scorer_value(o, name, "anomalies_auroc"), _scorer_value(h, name, "anomalies_auroc")
        if a is not None or b is not None:
            rows.append((f"AUROC on --anomalies, {name}", a, b))
    for label, a, b in rows:
        table.add_row(label, _cell(a), _cell(b))
    console.print(table)
    replay = result["original_findings_on_hardened"]
    for name, r in replay["scores"].items():
        if r.get("status") == "complete":
            console.print(
                f"original findings replayed on the hardened model, {name}: "
                f"{r['still_below_threshold']} of {replay['n']} still below its threshold "
                f"({r['still_below_min']} below its minimum normal score)"
            )
        else:
            console.print(f"replay under {name}: skipped ({r.get('reason', '')})")
