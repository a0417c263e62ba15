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
from .config import ScanConfig, scan_config
from .data import load_data
from .errors import InputError
from .model.adapter import AutoencoderAdapter
from .model.loading import open_model
from .progress import Reporter
from .scorers import SCORERS, make_scorer, trained_method
from .verdict import gated

SCHEMA = "aeaudit-compare/2"


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
        "verdict": report["verdict"],
        "status": report["status"],
        "gate_failed": report["gate"]["failed"],
        "counts": report["counts"],
        "findings_by_kind": by_kind,
        "findings_by_probe": by_probe,
        "certificates": by_kind.get("certificate", 0),
        "tau_min": t["tau_min"],
        "tau_op": t["tau_op"],
        "scale": t["scale"],
        "min_distance": t["min_distance"],
        "scorers": report.get("scorers", {}).get("table") or [],
        "adaptive": {
            row["scorer"]: dict(
                zip(
                    ("findings", "complete", "evaluations"),
                    adaptive_search(report.get("scorers", {}).get("table") or [], row["scorer"]),
                )
            )
            for row in report.get("scorers", {}).get("table") or []
        },
        "probes": [{k: p[k] for k in ("probe", "status", "evaluations", "candidates")} for p in report["probes"]],
        "errors": report["errors"],
    }


def replay_findings(
    findings: list,
    adapter: AutoencoderAdapter,
    data: np.ndarray,
    config: ScanConfig,
    thresholds: dict[str, Any],
    scorer_names: list[str],
) -> dict[str, Any]:
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
        scorer.fit(adapter, reference.to(adapter.device), heldout.to(adapter.device), config.fpr)
        s = scorer.score_batched(x).double().cpu().numpy()
        out["scores"][name] = {**_blind(s, scorer.threshold_, scorer.min_normal_), "posthoc": bool(scorer.posthoc)}
    return out


def _blind(scores: np.ndarray, threshold: float, minimum: float) -> dict[str, Any]:
    return {
        "status": "complete",
        "threshold": float(threshold),
        "min_normal": float(minimum),
        "still_below_threshold": int(np.sum(scores <= threshold)),
        "still_below_min": int(np.sum(scores <= minimum)),
        "median_score_ratio": float(np.median(scores / threshold)) if threshold > 0 and len(scores) else None,
    }


def adaptive_search(table: list[dict[str, Any]], name: str) -> tuple[int | None, bool, int]:
    """The adaptive search against score ``name`` in a scorer table: ``(findings or None when no search
    ran, whether it ran to completion, evaluations)``, so that "found nothing" is never claimed
    untested or half-tested."""
    for row in table:
        if row.get("scorer") == name and row.get("adaptive_findings") is not None:
            evaluations = int(row.get("adaptive_evaluations") or 0)
            n = int(row["adaptive_findings"])
            return (n if n > 0 or evaluations > 0 else None), bool(row.get("adaptive_complete")), evaluations
    return None, False, 0


def compare(
    original: str | Path | nn.Module | AutoencoderAdapter,
    hardened: str | Path | nn.Module | AutoencoderAdapter,
    data: str | Path | np.ndarray | torch.Tensor,
    config: ScanConfig | None = None,
    *,
    reporter: Reporter | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Audit ``original`` and ``hardened`` on the same normal ``data`` with the same settings.

    Both audits use the scan settings (``config`` and keyword overrides), plus the score the
    hardened model was trained for (``toll`` / ``gradcon``, read from its checkpoint) when that
    scorer is available. Returns the ``compare.json`` dict; the two full audits are under
    ``"results"`` as :class:`AuditResult` objects (not serialised by :func:`compare_json`).

    The gap is *closed* only when every check ran to completion and passed: the hardened model passes
    its gate, every replayed original finding is flagged under the deployed score, and the adaptive
    search against that score found nothing in its (stated) number of evaluations. A check that could
    not run or was cut short makes the result *inconclusive*, never closed.
    """
    config = scan_config(config, **overrides)
    arr = load_data(data, key=config.data_key, what="normal data")
    hardened_adapter, shaped = open_model(hardened, arr, config.load)
    method = trained_method(hardened_adapter.checkpoint_extras)
    deployed = method if method in SCORERS else "recon"
    if deployed not in config.scorers:
        config = config.with_overrides(scorers=(*config.scorers, deployed))
    original_result = scan(original, arr, config, reporter=reporter)
    hardened_result = scan(hardened_adapter, shaped, config, reporter=reporter)

    gate_level = [f for f in original_result.findings if gated(f.severity, config.fail_on)]  # warnings do not count
    replay = replay_findings(
        gate_level, hardened_adapter, shaped, config, hardened_result.thresholds, ["recon", deployed]
    )
    before, after = audit_summary(original_result), audit_summary(hardened_result)
    deployed_replay = replay["scores"].get(deployed, {})
    if replay["n"] and deployed_replay.get("status") != "complete":  # the deployed score is unavailable: judge by recon
        deployed, deployed_replay = "recon", replay["scores"]["recon"]
    adaptive, adaptive_complete, adaptive_evaluations = adaptive_search(after["scorers"], deployed)
    outcome = hardened_result.outcome.value
    checks = {  # None: the check could not run or did not finish (no original findings, no complete search)
        "hardened_gate_passed": {"PASS": True, "FAIL": False}.get(outcome),
        "original_findings_flagged": (deployed_replay.get("still_below_threshold", 0) == 0) if replay["n"] else None,
        "adaptive_search_found_nothing": (
            False if adaptive else None if adaptive is None or not adaptive_complete else True
        ),
    }
    had = sum(gated(f.severity, config.fail_on) for f in original_result.findings)
    counts = (
        f"original {before['counts'].get('reported', 0)} finding(s) → hardened {after['counts'].get('reported', 0)}"
    )
    searched = f"{adaptive_evaluations:,} evaluations of the adaptive search against {deployed}"
    unsettled = [k for k, v in checks.items() if v is None and not (k == "original_findings_flagged" and not had)]
    if False in checks.values():
        closed, verdict = (
            False,
            (
                f"NOT CLOSED: {counts}; adaptive findings vs {deployed}: {'–' if adaptive is None else adaptive}; "
                f"original findings still unflagged under {deployed}: "
                f"{deployed_replay.get('still_below_threshold', 0)} of {replay['n']}"
            ),
        )
    elif unsettled:
        closed, verdict = None, (f"INCONCLUSIVE: {counts}; not run to completion: {', '.join(unsettled)} ({searched})")
    elif not had:
        closed, verdict = None, f"NOTHING TO CLOSE: {counts} (the deployed score is {deployed}; {searched} found none)"
    else:
        closed, verdict = (
            True,
            (
                f"CLOSED: {counts}; every replayed original finding is flagged under {deployed}, "
                f"and {searched} found none (evidence, not proof)"
            ),
        )
    exit_code = hardened_result.exit_code()
    if exit_code == 0 and original_result.errors:
        exit_code = 3
    return {
        "schema": SCHEMA,
        "verdict": verdict,
        "closed": closed,
        "checks": checks,
        "adaptive_evaluations": adaptive_evaluations,
        "adaptive_complete": adaptive_complete,
        "exit_code": exit_code,
        "hardening": {
            "method": method,
            "deployed_score": deployed,
            "settings": hardened_adapter.checkpoint_extras.get("aeaudit") or {},
        },
        "original": {"model": original_result.model.get("source"), **before},
        "hardened": {"model": hardened_result.model.get("source"), **after},
        "original_findings_on_hardened": replay,
        "settings": {
            "seed": config.seed,
            "effort": config.effort,
            "time_limit": config.time_limit,
            "fpr": config.fpr,
            "probes": list(config.probes),
            "scorers": list(config.scorers),
            "fail_on": config.fail_on,
        },
        "results": {"original": original_result, "hardened": hardened_result},
    }


def compare_json(result: dict[str, Any]) -> dict[str, Any]:
    """``compare.json``: the compare dict without the in-memory audit results."""
    return {k: v for k, v in result.items() if k != "results"}


def validate_pair(original: str | Path, hardened: str | Path) -> None:
    if Path(original).resolve() == Path(hardened).resolve():
        raise InputError(
            f"compare: MODEL and HARDENED are the same file ({original}); give the hardened checkpoint second"
        )
