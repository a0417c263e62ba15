"""The gap comparison: would another anomaly score close the reconstruction loss's blind spots?

For every selected scorer: fit on the normal reference set, calibrate its threshold at ``--fpr``
on the held-out normal set, then
1. *transfer*: score the adversarial anomalies the reconstruction-targeted probes found (and the
   ``--anomalies`` if given) — AUROC against held-out normal data and the detection rate at the
   scorer's own threshold;
2. *adapt*: run the gradient searches again with the scorer's score as the objective; what they
   find (verified in float64 with the scorer's own float64 score) are its residual blind spots.

A scorer "closes the gap" only when it detects the transferred anomalies (rate ≥ 0.9) *and* its
adaptive search comes back empty within its budget (the adaptive-attack rule of
"Autoencoders for anomaly detection are unreliable").
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from ..errors import InputError
from ..findings import Finding, merge_and_rank
from ..probes import PROBES, Objective
from . import make_scorer
from .base import Scorer

log = logging.getLogger(__name__)

ADAPTIVE_PROBES = ("pgd-input", "pgd-latent")
FALLBACK_PROBES = ("random",)  # when no gradient search is installed
HIGH_DETECTION = 0.9  # transferred detection rate a scorer needs before it can close the gap
ROC_POINTS = 101
SCORER_BUDGET_SHARE = 0.4  # of the scan budget, kept for fitting and attacking the non-recon scorers


def adaptive_probe_names(settings: dict[str, Any]) -> tuple[str, ...]:
    """The searches run against each scorer: ``scorer_settings["adaptive_probes"]`` (a list, or
    names joined by ``+``) if given, else
    the PGD searches that are installed, else random search."""
    wanted = settings.get("adaptive_probes")
    if isinstance(wanted, str):  # from --scorer-settings adaptive_probes=pgd-input+random
        wanted = [n for n in wanted.split("+") if n]
    if wanted:
        unknown = [n for n in wanted if n not in PROBES]
        if unknown:
            raise InputError(f"adaptive_probes: unknown probe(s) {', '.join(unknown)}; choose from {', '.join(PROBES)}")
        return tuple(wanted)
    return tuple(n for n in ADAPTIVE_PROBES if n in PROBES) or FALLBACK_PROBES


def scorer_budget_share(names) -> float:
    """The share of the scan budget to keep for the comparison: none when only ``recon`` is
    selected, whose adaptive search is the scan's own."""
    return SCORER_BUDGET_SHARE if any(n != "recon" for n in names) else 0.0


def _to_tensor(x: np.ndarray, state) -> torch.Tensor:
    return torch.as_tensor(np.array(x), dtype=state.adapter.dtype).to(state.adapter.device)


def _auroc(normal: np.ndarray, other: np.ndarray) -> float | None:
    if not len(normal) or not len(other):
        return None
    labels = np.r_[np.zeros(len(normal)), np.ones(len(other))]
    return float(roc_auc_score(labels, np.r_[normal, other]))


def _roc(normal: np.ndarray, other: np.ndarray, against: str) -> dict[str, Any]:
    labels = np.r_[np.zeros(len(normal)), np.ones(len(other))]
    fpr, tpr, _ = roc_curve(labels, np.r_[normal, other])
    if len(fpr) > ROC_POINTS:
        keep = np.unique(np.linspace(0, len(fpr) - 1, ROC_POINTS).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"against": against, "fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr]}


def _empty_row(name: str, verdict: str, note: str = "", posthoc: bool | None = None) -> dict[str, Any]:
    return {"scorer": name, "posthoc": posthoc, "threshold": None, "transferred": 0, "transferred_detection_rate": None,
            "auroc": None, "anomalies_auroc": None, "adaptive_findings": None, "adaptive_critical": None,
            "adaptive_best_distance_ratio": None, "adaptive_best_loss_ratio": None,
            "adaptive_best_normal_quantile": None, "verdict": verdict, "note": note}


def _best_ratios(found: list[Finding], scorer: Scorer) -> tuple[float | None, float | None, float | None]:
    """Largest distance ratio; smallest score/threshold (only where normal scores are ≥ 0, so the
    ratio means "a fraction of the threshold"; GradCon's can be negative); and the fraction of
    held-out normal scores at or below the lowest finding score (0 = below all of them)."""
    if not found:
        return None, None, None
    best_d = max(f.distance_ratio for f in found)
    lowest = min(f.loss if f.score is None else f.score for f in found)  # the scan's own findings carry a loss
    ratio = lowest / scorer.threshold_ if scorer.min_normal_ >= 0 and scorer.threshold_ > 0 else None
    quantile = float(np.mean(scorer.heldout_scores_ <= lowest))
    return best_d, ratio, quantile


def _verdict(rate: float | None, n_adaptive: int, searched: bool, search_note: str, complete: bool = True) -> str:
    """An empty search that the budget cut short never "closes the gap": it says so instead."""
    if n_adaptive:
        return "blind spots remain"
    if rate is not None and rate < HIGH_DETECTION:
        return "blind spots remain"
    if not searched:
        return f"not evaluated ({search_note})"
    if rate is None:
        return "not evaluated (no recon findings; none of its own" + ("" if complete else " within the budget") + ")"
    if not complete:
        return "detects the transferred findings; its own search found none before the budget ran out"
    return "closes the gap"


def _evaluate(state, name: str, scan_findings: list[Finding], adversarial: torch.Tensor | None,
              anomalies: torch.Tensor | None, probes: tuple[str, ...],
              budget) -> tuple[dict[str, Any], dict | None, list[Finding], list[dict], bool]:
    """One scorer: ``(table row, roc curve, new adaptive findings, probe summaries, interrupted)``."""
    from ..audit import run_probes  # audit calls this module: import at call time

    scorer = make_scorer(name, state.config.scorer_settings)
    reason = scorer.skip_reason(state.adapter)
    if reason is not None:
        return _empty_row(name, f"not evaluated ({reason})"), None, [], [], False
    with state.reporter.task(f"scorer {name}: fit and calibrate", total=None):
        scorer.fit(state.adapter, state.baseline.reference).calibrate(state.baseline.heldout, state.config.fpr)
    normal = scorer.heldout_scores_
    row = _empty_row(name, "", getattr(scorer, "note_", ""), bool(scorer.posthoc))
    row["threshold"] = scorer.threshold_
    curve = None
    if adversarial is not None:
        s_adv = scorer.score_batched(adversarial).double().cpu().numpy()
        row["transferred"] = int(len(s_adv))
        row["transferred_detection_rate"] = float(np.mean(s_adv > scorer.threshold_))
        row["auroc"] = _auroc(normal, s_adv)
        curve = _roc(normal, s_adv, "reconstruction findings")
    if anomalies is not None:
        s_anom = scorer.score_batched(anomalies).double().cpu().numpy()
        row["anomalies_auroc"] = _auroc(normal, s_anom)
        curve = curve or _roc(normal, s_anom, "--anomalies")

    if name == "recon":  # its adaptive search is the scan's own, against the reconstruction loss
        own = [f for f in scan_findings if f.objective == "recon"]
        row["adaptive_findings"] = len(own)
        row["adaptive_critical"] = sum(f.severity == "critical" for f in own)
        (row["adaptive_best_distance_ratio"], row["adaptive_best_loss_ratio"],
         row["adaptive_best_normal_quantile"]) = _best_ratios(own, scorer)
        row["verdict"] = _verdict(row["transferred_detection_rate"], len(own), True, "")
        row["note"] = "adaptive search = the scan's own searches against the reconstruction loss"
        return row, curve, [], [], False
    objective = Objective(name, scorer.score, tau_min=scorer.min_normal_, tau_op=scorer.threshold_,
                          differentiable=scorer.differentiable)
    results, raw, interrupted = run_probes(state, probes, objective, budget,
                                           score_fn64=scorer.rebind(state.verifier.adapter).score)
    found, _ = merge_and_rank(raw, state.baseline.scale, top_k=state.config.top_k)
    searched = any(r.evaluations > 0 or r.findings for r in results)
    search_note = "; ".join(f"{r.probe}: {r.reason or r.status}" for r in results) or "no search ran"
    if not searched and not any(r.status in ("skipped", "error") for r in results):
        search_note = "no time left in the budget for the adaptive search"
    row["adaptive_findings"] = len(found)
    row["adaptive_critical"] = sum(f.severity == "critical" for f in found)
    (row["adaptive_best_distance_ratio"], row["adaptive_best_loss_ratio"],
     row["adaptive_best_normal_quantile"]) = _best_ratios(found, scorer)
    complete = all(r.status in ("complete", "skipped") for r in results)
    row["verdict"] = _verdict(row["transferred_detection_rate"], len(found), searched, search_note, complete)
    return row, curve, found, [r.summary() for r in results], interrupted


def compare_scorers(state, findings: list[Finding], budget) -> dict[str, Any]:
    """Fit, calibrate, test and attack every scorer in ``state.config.scorers``; the ``scorers``
    section of ``report.json`` (``status``, ``table``, ``roc``, ``adaptive_findings``, ``adaptive_probes``)."""
    names = list(state.config.scorers)
    probes = adaptive_probe_names(state.config.scorer_settings)
    recon_found = [f.x for f in findings if f.x is not None and f.objective == "recon"]
    adversarial = _to_tensor(np.stack(recon_found), state) if recon_found else None
    anomalies = _to_tensor(state.anomalies, state) if state.anomalies is not None and len(state.anomalies) else None
    out: dict[str, Any] = {"status": "complete", "adaptive_search": list(probes), "high_detection": HIGH_DETECTION,
                           "table": [], "roc": {}, "adaptive_findings": [], "adaptive_probes": {}}
    for i, name in enumerate(names):
        share = budget.share(1.0 / (len(names) - i))
        try:
            row, curve, found, summaries, interrupted = _evaluate(state, name, findings, adversarial, anomalies,
                                                                  probes, share)
        except KeyboardInterrupt:
            interrupted = True
            row, curve, found, summaries = _empty_row(name, "not evaluated (interrupted)"), None, [], []
        except InputError:
            raise
        except Exception as exc:  # one broken scorer must not hide the others' rows
            log.error("scorer %s failed: %s: %s", name, type(exc).__name__, exc)
            log.debug("traceback of scorer %s", name, exc_info=True)
            row, curve, found, summaries = _empty_row(name, f"not evaluated (error: {type(exc).__name__}: {exc})"), None, [], []
            interrupted = False
        out["table"].append(row)
        if curve is not None:
            out["roc"][name] = curve
        out["adaptive_findings"].extend(f.to_dict(with_arrays=False) for f in found)
        if summaries:
            out["adaptive_probes"][name] = summaries
        if interrupted or any(s["status"] == "incomplete" for s in summaries):
            out["status"] = "incomplete"
        if interrupted:
            for rest in names[i + 1 :]:
                out["table"].append(_empty_row(rest, "not evaluated (interrupted)"))
            break
    return out
