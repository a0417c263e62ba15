"""Before and after: audit the original and the hardened model side by side.

Hardening only counts when the hardened model's blind spots are gone under the score it is
deployed with, checked three ways: (1) its own audit (the gate on the reconstruction loss and
the scorer table's adaptive searches, which attack each score directly), (2) a replay of the
*original* model's verified findings through the hardened model (are those inputs now flagged?),
(3) the side-by-side counts. :func:`compare` returns one dict, written as ``compare.json``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .audit import AuditResult, scan
from .baseline import split_indices
from .config import ScanConfig
from .data import load_data, shape_samples
from .errors import InputError
from .model.adapter import AutoencoderAdapter
from .model.loading import load_model
from .progress import Reporter

SCHEMA = "aeaudit-compare/1"
HARDENING_SCORERS = {"toll": "toll", "gradcon": "gradcon"}  # hardening method → the score it is deployed with


def hardening_method(extras: dict[str, Any]) -> str | None:
    """Which remedy a checkpoint was hardened with, from its extras (``aeaudit harden`` metadata,
    else the scorer keys ``toll_beta`` / ``gradcon_reference``)."""
    meta = extras.get("aeaudit")
    if isinstance(meta, dict) and meta.get("method") in HARDENING_SCORERS:
        return meta["method"]
    if "gradcon_reference" in extras:
        return "gradcon"
    if "toll_beta" in extras:
        return "toll"
    return None


def audit_summary(result: AuditResult) -> dict[str, Any]:
    """The numbers compared side by side."""
    report = result.to_dict(with_arrays=False)
    by_kind: dict[str, int] = {}
    by_probe: dict[str, int] = {}
    for f in result.findings:
        by_kind[f.kind] = by_kind.get(f.kind, 0) + 1
        by_probe[f.probe] = by_probe.get(f.probe, 0) + 1
    t = report["thresholds"]
    return {
        "verdict": report["verdict"], "status": report["status"], "gate_failed": report["gate"]["failed"],
        "counts": report["counts"], "findings_by_kind": by_kind, "findings_by_probe": by_probe,
        "certificates": by_kind.get("certificate", 0),
        "tau_min": t["tau_min"], "tau_op": t["tau_op"], "scale": t["scale"], "min_distance": t["min_distance"],
        "scorers": report.get("scorers", {}).get("table") or [],
        "adaptive_searched": {name: any(p.get("evaluations", 0) > 0 for p in summaries)
                              for name, summaries in (report.get("scorers", {}).get("adaptive_probes") or {}).items()},
        "probes": [{k: p[k] for k in ("probe", "status", "evaluations", "candidates")} for p in report["probes"]],
        "errors": report["errors"],
    }


def replay_findings(findings: list, adapter: AutoencoderAdapter, data: np.ndarray, config: ScanConfig,
                    thresholds: dict[str, Any], scorer_names: list[str]) -> dict[str, Any]:
    """Score the original model's findings on the hardened model.

    The reconstruction loss is recomputed in float64 against the hardened audit's ``τ_min`` /
    ``τ_op``; every other score is fitted on the audit's reference split and calibrated on its
    held-out split at the same ``--fpr``. A finding is *still blind* under a score when it scores
    at or below that score's threshold."""
    xs = [f.x for f in findings if f.x is not None]
    out: dict[str, Any] = {"n": len(xs), "scores": {}}
    if not xs:
        return out
    x = torch.as_tensor(np.stack(xs))
    try:
        cpu64 = adapter.to("cpu", torch.float64)
    except RuntimeError:
        cpu64 = adapter.to("cpu")
    loss = cpu64.losses(x.to(cpu64.dtype)).double().numpy()
    out["scores"]["recon"] = _blind(loss, float(thresholds["tau_op"]), float(thresholds["tau_min"]))
    others = [n for n in scorer_names if n != "recon"]
    if not others:
        return out
    from .scorers import SCORERS, make_scorer

    ref_idx, held_idx = split_indices(len(data), config.heldout_fraction, config.seed)
    reference = torch.as_tensor(np.asarray(data[ref_idx]), dtype=adapter.dtype)
    heldout = torch.as_tensor(np.asarray(data[held_idx]), dtype=adapter.dtype)
    for name in others:
        if name not in SCORERS:
            out["scores"][name] = {"status": "skipped", "reason": f"scorer {name!r} is not available"}
            continue
        scorer = make_scorer(name, config.scorer_settings)
        reason = scorer.skip_reason(adapter)
        if reason:
            out["scores"][name] = {"status": "skipped", "reason": reason}
            continue
        scorer.fit(adapter, reference.to(adapter.device)).calibrate(heldout, config.fpr)
        s = scorer.score_batched(x).double().cpu().numpy()
        out["scores"][name] = {**_blind(s, scorer.threshold_, scorer.min_normal_), "posthoc": bool(scorer.posthoc)}
    return out


def _blind(scores: np.ndarray, threshold: float, minimum: float) -> dict[str, Any]:
    return {"status": "complete", "threshold": float(threshold), "min_normal": float(minimum),
            "still_below_threshold": int(np.sum(scores <= threshold)), "still_below_min": int(np.sum(scores <= minimum)),
            "median_score_ratio": float(np.median(scores / threshold)) if threshold > 0 and len(scores) else None}


def _scorer_value(summary: dict[str, Any], name: str, key: str) -> Any:
    return next((row.get(key) for row in summary["scorers"] if row.get("scorer") == name), None)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _adaptive(summary: dict[str, Any], name: str) -> int | None:
    """Findings of the adaptive search against score ``name``; ``None`` when no search ran
    (skipped score, or no budget left), so that "found nothing" is never claimed untested."""
    for row in summary["scorers"]:
        if row.get("scorer") == name and row.get("adaptive_findings") is not None:
            n = int(row["adaptive_findings"])
            return n if n > 0 or summary["adaptive_searched"].get(name) else None
    return None


def compare(original: str | Path | nn.Module | AutoencoderAdapter, hardened: str | Path | nn.Module | AutoencoderAdapter,
            data: str | Path | np.ndarray | torch.Tensor, config: ScanConfig | None = None, *,
            reporter: Reporter | None = None, **overrides: Any) -> dict[str, Any]:
    """Audit ``original`` and ``hardened`` on the same normal ``data`` with the same settings.

    Both audits use the scan settings (``config`` and keyword overrides), plus the score the
    hardened model was trained for (``toll`` / ``gradcon``, read from its checkpoint) when that
    scorer is available. Returns the ``compare.json`` dict; the two full audits are under
    ``"results"`` as :class:`AuditResult` objects (not serialised by :func:`to_json`).
    """
    config = (config or ScanConfig()).with_overrides(**overrides) if overrides else (config or ScanConfig())
    hardened_adapter = hardened if isinstance(hardened, AutoencoderAdapter) else load_model(hardened, config.load_options())
    method = hardening_method(hardened_adapter.checkpoint_extras)
    deployed = HARDENING_SCORERS.get(method or "", "recon")
    from .scorers import SCORERS

    scorer_names = list(config.scorers)
    if deployed not in scorer_names and deployed in SCORERS:
        scorer_names.append(deployed)
    config = config.with_overrides(scorers=tuple(scorer_names))
    original_result = scan(original, data, config, reporter=reporter)
    hardened_result = scan(hardened_adapter, data, config, reporter=reporter)

    arr = load_data(data, key=config.data_key, what="normal data")
    arr, _ = shape_samples(arr, hardened_adapter.input_shape, "normal data")
    replay = replay_findings(original_result.findings, hardened_adapter, arr, config,
                             hardened_result.thresholds, ["recon", deployed])
    before, after = audit_summary(original_result), audit_summary(hardened_result)
    deployed_replay = replay["scores"].get(deployed, {})
    if replay["n"] and deployed_replay.get("status") != "complete":  # the deployed score is unavailable: judge by recon
        deployed, deployed_replay = "recon", replay["scores"]["recon"]
    adaptive = _adaptive(after, deployed)
    checks = {  # None: the check could not run (no original findings, or no adaptive search of that score)
        "hardened_gate_passed": not hardened_result.gate_failed(),
        "original_findings_flagged": (deployed_replay.get("still_below_threshold", 0) == 0) if replay["n"] else None,
        "adaptive_search_found_nothing": None if adaptive is None else adaptive == 0,
    }
    passed = all(v for v in checks.values() if v is not None)
    had = before["counts"].get("reported", 0)
    closed = passed if had else None  # None: the original audit found nothing to close
    exit_code = hardened_result.exit_code()
    if exit_code == 0 and original_result.errors:
        exit_code = 3
    counts = f"original {had} finding(s) → hardened {after['counts'].get('reported', 0)}"
    if not passed:
        verdict = (f"NOT CLOSED: {counts}; adaptive findings vs {deployed}: {'–' if adaptive is None else adaptive}; "
                   f"original findings still unflagged under {deployed}: "
                   f"{deployed_replay.get('still_below_threshold', 0)} of {replay['n']}")
    elif had:
        verdict = f"CLOSED: {counts}; every replayed original finding is flagged under {deployed}"
    else:
        verdict = f"NOTHING TO CLOSE: {counts} within the budget (the deployed score is {deployed})"
    return {
        "schema": SCHEMA,
        "verdict": verdict,
        "closed": closed,
        "checks": checks,
        "exit_code": exit_code,
        "hardening": {"method": method, "deployed_score": deployed,
                      "settings": hardened_adapter.checkpoint_extras.get("aeaudit") or {}},
        "original": {"model": original_result.model.get("source"), **before},
        "hardened": {"model": hardened_result.model.get("source"), **after},
        "original_findings_on_hardened": replay,
        "settings": {"seed": config.seed, "budget": config.budget, "fpr": config.fpr, "probes": list(config.probes),
                     "scorers": list(config.scorers), "fail_on": config.fail_on},
        "results": {"original": original_result, "hardened": hardened_result},
    }


def compare_json(result: dict[str, Any]) -> dict[str, Any]:
    """``compare.json``: the compare dict without the in-memory audit results."""
    return {k: v for k, v in result.items() if k != "results"}


def render_compare(result: dict[str, Any], console) -> None:
    """A short terminal table: original vs hardened."""
    from rich.table import Table

    style = "bold red" if result["closed"] is False else "bold green"
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
        rows.append((f"adaptive findings vs {name}", _adaptive(o, name), _adaptive(h, name)))
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
            console.print(f"original findings replayed on the hardened model, {name}: "
                          f"{r['still_below_threshold']} of {replay['n']} still below its threshold "
                          f"({r['still_below_min']} below its minimum normal score)")
        else:
            console.print(f"replay under {name}: skipped ({r.get('reason', '')})")


def validate_pair(original: str | Path, hardened: str | Path) -> None:
    if Path(original).resolve() == Path(hardened).resolve():
        raise InputError(f"compare: MODEL and HARDENED are the same file ({original}); give the hardened checkpoint second")
