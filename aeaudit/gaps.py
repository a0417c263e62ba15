"""The gap comparison: would another anomaly score close the reconstruction loss's blind spots?

For every selected scorer: fit on the normal reference set, calibrate its threshold at ``--fpr``
on the held-out normal set, then
1. *transfer*: score the adversarial anomalies the reconstruction-targeted probes found (and the
   ``--anomalies`` if given) — AUROC against held-out normal data and the detection rate at the
   scorer's own threshold;
2. *adapt*: run the gradient searches again with the scorer's score as the objective; what they
   find (verified in float64 with the scorer's own float64 score) are its residual blind spots.

A scorer "closes the gap" only when it detects the transferred anomalies (rate ≥ 0.9) *and* its
adaptive search ran to completion and came back empty (the adaptive-attack rule of "Autoencoders
for anomaly detection are unreliable"); the verdict then says how many evaluations found nothing —
evidence, not proof. The adaptive searches have their own, smaller work settings per ``--effort``
(``ADAPTIVE_SETTINGS``): every score is attacked with the same amount of work.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from .config import ADAPTIVE_PROBES_KEY
from .errors import InputError, one_line
from .findings import Finding, merge_and_rank
from .probes import PROBES, Objective, Probe, ProbeResult, make_probe
from .runner import AuditState, run_probes
from .scorers import Scorer, make_scorer
from .settings import accepted_keys

log = logging.getLogger(__name__)

ADAPTIVE_PROBES = ("pgd-input", "pgd-latent")
FALLBACK_PROBES = ("random",)  # when no gradient search is installed
HIGH_DETECTION = 0.9  # transferred detection rate a scorer needs before it can close the gap
ROC_POINTS = 101
# the work of each adaptive search, per --effort (a scorer's score costs more than the loss: GradCon
# takes gradients per sample, the energy score unrolls its projection); --probe-settings override it
ADAPTIVE_SETTINGS = {
    "quick": {"starts": 8, "steps": 30, "restarts": 0, "farthest_starts": 0, "samples": 512},
    "standard": {"starts": 16, "steps": 60, "restarts": 0, "farthest_starts": 0, "samples": 1024},
    "thorough": {"starts": 32, "steps": 150, "restarts": 0, "farthest_starts": 8, "samples": 4096},
}


def adaptive_probe_names(settings: dict[str, Any]) -> tuple[str, ...]:
    """The searches run against each scorer: ``scorer_settings["adaptive_probes"]`` (a list, or
    names joined by ``+``) if given, else the PGD searches that are installed, else random search."""
    wanted = settings.get(ADAPTIVE_PROBES_KEY)
    if isinstance(wanted, str):  # from --scorer-settings adaptive_probes=pgd-input+random
        wanted = [n for n in wanted.split("+") if n]
    if wanted:
        unknown = [n for n in wanted if n not in PROBES]
        if unknown:
            raise InputError(f"adaptive_probes: unknown probe(s) {', '.join(unknown)}; choose from {', '.join(PROBES)}")
        return tuple(wanted)
    return tuple(n for n in ADAPTIVE_PROBES if n in PROBES) or FALLBACK_PROBES


def adaptive_probes(state: AuditState, names: tuple[str, ...]) -> list[Probe]:
    """The adaptive searches with their work settings (``ADAPTIVE_SETTINGS`` for the scan's effort,
    under the user's own ``--probe-settings``)."""
    config, settings = state.config, state.config.probe_settings
    preset = ADAPTIVE_SETTINGS[config.effort]
    flat = {k: v for k, v in settings.items() if k not in PROBES}
    out = []
    for name in names:
        # the adaptive preset, then the user's flat settings, then the user's settings for this probe
        own = {
            **{k: v for k, v in preset.items() if k in accepted_keys(PROBES[name])},
            **flat,
            **settings.get(name, {}),
        }
        out.append(make_probe(name, {"latent_extent": config.latent_extent, name: own}, config.effort))
    return out


def _to_tensor(x: np.ndarray, state: AuditState) -> torch.Tensor:
    return torch.as_tensor(np.array(x), dtype=state.adapter.dtype).to(state.adapter.device)


def _auroc(normal: np.ndarray, other: np.ndarray) -> float | None:
    if not len(normal) or not len(other):
        return None
    from sklearn.metrics import roc_auc_score  # ~1 s to import: only when scorers are compared

    labels = np.r_[np.zeros(len(normal)), np.ones(len(other))]
    return float(roc_auc_score(labels, np.r_[normal, other]))


def _roc(normal: np.ndarray, other: np.ndarray, against: str) -> dict[str, Any]:
    from sklearn.metrics import roc_curve

    labels = np.r_[np.zeros(len(normal)), np.ones(len(other))]
    fpr, tpr, _ = roc_curve(labels, np.r_[normal, other])
    if len(fpr) > ROC_POINTS:
        keep = np.unique(np.linspace(0, len(fpr) - 1, ROC_POINTS).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"against": against, "fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr]}


def _empty_row(name: str, verdict: str, note: str = "", posthoc: bool | None = None) -> dict[str, Any]:
    return {
        "scorer": name,
        "posthoc": posthoc,
        "threshold": None,
        "transferred": 0,
        "transferred_detection_rate": None,
        "auroc": None,
        "anomalies_auroc": None,
        "adaptive_findings": None,
        "adaptive_critical": None,
        "adaptive_best_distance_ratio": None,
        "adaptive_best_loss_ratio": None,
        "adaptive_best_normal_quantile": None,
        "verdict": verdict,
        "note": note,
    }


def _best_ratios(found: list[Finding], scorer: Scorer) -> tuple[float | None, float | None, float | None]:
    """Largest distance ratio; smallest score/threshold (only where normal scores are ≥ 0, so the
    ratio means "a fraction of the threshold"; GradCon's can be negative); and the fraction of
    held-out normal scores at or below the lowest finding score (0 = below all of them)."""
    values = [f.loss if f.score is None else f.score for f in found]  # the scan's own findings carry a loss
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return (max(f.distance_ratio for f in found) if found else None), None, None
    best_d = max(f.distance_ratio for f in found)
    lowest = min(finite)
    ratio = lowest / scorer.threshold_ if scorer.min_normal_ >= 0 and scorer.threshold_ > 0 else None
    quantile = float(np.mean(scorer.heldout_scores_ <= lowest))
    return best_d, ratio, quantile


def _verdict(
    rate: float | None, n_adaptive: int, searched: bool, search_note: str, complete: bool = True, evaluations: int = 0
) -> str:
    """An empty search that did not run to completion never "closes the gap": it says so instead."""
    if n_adaptive:
        return "blind spots remain"
    if rate is not None and rate < HIGH_DETECTION:
        return "blind spots remain"
    if not searched:
        return f"not evaluated ({search_note})"
    if not complete:
        return f"inconclusive: its own search was cut short ({search_note}) after {evaluations:,} evaluations"
    if rate is None:
        return (
            f"not evaluated (no recon findings to transfer); its own search found none in {evaluations:,} evaluations"
        )
    return f"closes the gap: detects the transferred findings; its own search found none in {evaluations:,} evaluations"


def _evaluate(
    state: AuditState,
    name: str,
    scan_findings: list[Finding],
    scan_results: list[ProbeResult],
    adversarial: torch.Tensor | None,
    anomalies: torch.Tensor | None,
    probe_names: tuple[str, ...],
) -> tuple[dict[str, Any], dict | None, list[Finding], list[dict]]:
    """One scorer: ``(table row, roc curve, new adaptive findings, probe summaries)``."""
    scorer = make_scorer(name, state.config.scorer_settings)
    reason = scorer.skip_reason(state.adapter)
    if reason is not None:
        return _empty_row(name, f"not evaluated ({reason})"), None, [], []
    b = state.baseline
    with state.reporter.task(f"scorer {name}: fit and calibrate", total=None):
        scorer.fit(state.adapter, b.reference, b.heldout, state.config.fpr)
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
        (row["adaptive_best_distance_ratio"], row["adaptive_best_loss_ratio"], row["adaptive_best_normal_quantile"]) = (
            _best_ratios(own, scorer)
        )
        searches = [r for r in scan_results if r.kind == "search"]
        row["adaptive_complete"] = all(r.status in ("complete", "skipped") for r in searches)
        row["adaptive_evaluations"] = sum(r.evaluations for r in searches)
        searched = row["adaptive_evaluations"] > 0 or bool(own)
        row["verdict"] = _verdict(
            row["transferred_detection_rate"],
            len(own),
            searched,
            "no search of the scan ran against the reconstruction loss",
            row["adaptive_complete"],
            row["adaptive_evaluations"],
        )
        row["note"] = "adaptive search = the scan's own searches against the reconstruction loss"
        return row, curve, [], []
    search = scorer.search_objective()
    objective = Objective(
        name, search.score, tau_min=search.tau_min, tau_op=search.tau_op, differentiable=search.differentiable
    )
    judge = Objective(
        name, scorer.score, tau_min=scorer.min_normal_, tau_op=scorer.threshold_, differentiable=scorer.differentiable
    )
    results, raw = run_probes(
        state,
        adaptive_probes(state, probe_names),
        objective,
        score_fn64=scorer.rebind(state.verifier.adapter).score,
        verify_objective=judge,
    )
    found, _ = merge_and_rank(raw, b.scale, top_k=state.config.top_k)
    searched = any(r.evaluations > 0 or r.findings for r in results)
    search_note = "; ".join(f"{r.probe}: {r.reason or r.status}" for r in results) or "no search ran"
    if search.note:
        row["note"] = f"{row['note']}; search: {search.note}" if row["note"] else f"search: {search.note}"
    row["adaptive_findings"] = len(found)
    row["adaptive_critical"] = sum(f.severity == "critical" for f in found)
    (row["adaptive_best_distance_ratio"], row["adaptive_best_loss_ratio"], row["adaptive_best_normal_quantile"]) = (
        _best_ratios(found, scorer)
    )
    complete = all(r.status in ("complete", "skipped") for r in results)
    row["adaptive_complete"] = complete
    row["adaptive_evaluations"] = sum(r.evaluations for r in results)
    row["verdict"] = _verdict(
        row["transferred_detection_rate"], len(found), searched, search_note, complete, row["adaptive_evaluations"]
    )
    return row, curve, found, [r.summary() for r in results]


def compare_scorers(state: AuditState, findings: list[Finding], scan_results: list[ProbeResult]) -> dict[str, Any]:
    """Fit, calibrate, test and attack every scorer in ``state.config.scorers``; the ``scorers``
    section of ``report.json`` (``status``, ``table``, ``roc``, ``adaptive_findings``, ``adaptive_probes``)."""
    names = list(state.config.scorers)
    probe_names = adaptive_probe_names(state.config.scorer_settings)
    recon_found = [f.x for f in findings if f.x is not None and f.objective == "recon" and f.kind != "non-finite"]
    adversarial = _to_tensor(np.stack(recon_found), state) if recon_found else None
    anomalies = _to_tensor(state.anomalies, state) if state.anomalies is not None and len(state.anomalies) else None
    out: dict[str, Any] = {
        "status": "complete",
        "adaptive_search": list(probe_names),
        "high_detection": HIGH_DETECTION,
        "adaptive_settings": ADAPTIVE_SETTINGS[state.config.effort],
        "table": [],
        "roc": {},
        "adaptive_findings": [],
        "adaptive_probes": {},
        "errors": [],
    }
    for name in names:
        if (stopped := state.stop.reason()) is not None:
            out["table"].append(_empty_row(name, f"not evaluated ({stopped})"))
            out["status"] = "incomplete"
            continue
        try:
            row, curve, found, summaries = _evaluate(
                state, name, findings, scan_results, adversarial, anomalies, probe_names
            )
        except KeyboardInterrupt:
            state.stop.interrupt("Ctrl-C")
            row, curve, found, summaries = _empty_row(name, "not evaluated (interrupted)"), None, [], []
            out["status"] = "incomplete"
        except InputError:
            raise
        except Exception as exc:  # one broken scorer must not hide the others' rows
            log.error("scorer %s failed: %s", name, one_line(exc))
            log.debug("traceback of scorer %s", name, exc_info=True)
            row, curve, found, summaries = _empty_row(name, f"not evaluated (error: {one_line(exc)})"), None, [], []
            out["errors"].append(f"scorer {name}: {one_line(exc)}")
        out["table"].append(row)
        if curve is not None:
            out["roc"][name] = curve
        out["adaptive_findings"].extend(f.to_dict(with_arrays=False) for f in found)
        if summaries:
            out["adaptive_probes"][name] = summaries
        if any(s["status"] == "incomplete" for s in summaries):
            out["status"] = "incomplete"
    return out
