"""The report's sections as plain data for the HTML template, built from the report dict alone.

Each section is built by one function that returns the template's view of it. A section
whose data is missing says so in plain words instead of disappearing, and a figure that
fails to draw is replaced by a one-line note rather than failing the report. The latent map
and the gallery of findings are in :mod:`.findings_views`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

from . import plots
from .certification import outcome_kind, outcome_lines, outcome_of
from .fmt import num, span

log = logging.getLogger(__name__)

SCORER_COLUMNS = (
    ("scorer", "scorer"),
    ("posthoc", "post-hoc"),
    ("threshold", "threshold"),
    ("transferred_detection_rate", "detects recon findings"),
    ("auroc", "AUROC (findings)"),
    ("anomalies_auroc", "AUROC (your anomalies)"),
    ("adaptive_findings", "adaptive findings"),
    ("adaptive_critical", "of them critical"),
    ("adaptive_best_distance_ratio", "best d/s"),
    ("adaptive_best_loss_ratio", "best score/τ"),
    ("verdict", "verdict"),
    ("note", "note"),
)


BADGES = {  # the word beside the outcome in the banner: what kind of evidence the verdict rests on
    "certified": "✓ certified — proven by bounds",
    "pass": "search evidence, not proof",
    "fail": "verified blind spots",
    "inconclusive": "not all planned work was done",
    "error": "a check crashed",
}


# ----------------------------------------------------------------------------- helpers
def to_float(value: Any, default: float = math.nan) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def safe_figure(what: str, draw: Callable[..., str], *args: Any, **kwargs: Any) -> dict[str, str]:
    """``{"src": data URI}``, or ``{"error": note}`` when the figure cannot be drawn."""
    try:
        return {"src": draw(*args, **kwargs), "alt": what}
    except Exception as exc:  # a figure must never take the whole report down
        log.warning("report figure %r not drawn: %s: %s", what, type(exc).__name__, exc)
        return {"error": f"The {what} could not be drawn ({type(exc).__name__}: {exc})."}


def probes_of(report: dict, kind: str | None = None) -> list[dict]:
    return [p for p in report.get("probes") or [] if kind is None or p.get("kind") == kind]


def probe_note(p: dict) -> str:
    status, reason = p.get("status", "?"), p.get("reason") or ""
    return {
        "complete": reason or "ran to completion",
        "incomplete": f"incomplete — {reason or 'cut short'}",
        "skipped": f"did not run — {reason or 'not applicable'}",
        "error": f"failed — {reason or 'unknown error'}",
    }.get(status, f"{status} {reason}".strip())


def finding_label(i: int) -> str:
    return f"#{i + 1}"


# ----------------------------------------------------------------------------- sections
def verdict_view(report: dict) -> dict[str, Any]:
    gate = report.get("gate") or {}
    counts = report.get("counts") or {}
    findings = report.get("findings") or []
    fail_on = gate.get("fail_on", "high")
    levels = {
        "critical": "critical findings",
        "high": "high or critical findings",
        "warning": "any finding, warnings included",
        "never": "nothing (the gate is off)",
    }.get(fail_on, fail_on)
    kind = outcome_kind(report)
    lines = [f"The gate (--fail-on {fail_on}) fails on {levels}; exit code {gate.get('exit_code', '—')}."]
    by_probe: dict[str, int] = {}
    for f in findings:
        by_probe[f.get("probe", "?")] = by_probe.get(f.get("probe", "?"), 0) + 1
    regions = [region_row(r) for r in report.get("regions") or []]
    if findings:
        found_by = ", ".join(f"{k} ({v})" for k, v in by_probe.items())
        grouped = (
            f" They lie in {len(regions)} blind region(s): the table below, one row per region, worst first."
            if regions
            else ""
        )
        lines.append(
            f"{num(counts.get('verified', len(findings)))} verified finding(s), {len(findings)} kept after merging "
            f"{counts.get('merged_duplicates', 0)} near-duplicate(s): {counts.get('critical', 0)} critical "
            f"(loss ≤ τ_min and far), {counts.get('high', 0)} high (loss ≤ τ_op and far), "
            f"{counts.get('warning', 0)} warning (loss ≤ τ_min, between s and δ from the normal data), "
            f"found by {found_by}.{grouped}"
        )
    elif kind == "certified":
        lines.append(
            "No input far from the normal data with a loss below the thresholds was found, and the certify check "
            "proved that its boxes hold none (see Certification); outside those boxes nothing is proven."
        )
    else:
        lines.append(
            "No input far from the normal data with a loss below the thresholds was found within the budget. "
            "That is evidence, not proof: a longer budget or other probes may still find some."
        )
    if report.get("status") != "complete" and kind != "inconclusive":  # the banner already says why
        lines.append(
            "Status: incomplete — the time budget or an interrupt cut some work short; the results so far are kept."
        )
    if (report.get("region_grouping") or {}).get("complete") is False:
        lines.append("Grouping stopped at its limit of path checks: some regions may be split further than they are.")
    checks = []
    for p in probes_of(report):
        art = (report.get("artifacts") or {}).get(p.get("probe"), {})
        checks.append(
            {
                "probe": p.get("probe"),
                "kind": p.get("kind"),
                "status": p.get("status"),
                "note": probe_note(p),
                "evaluations": num(p.get("evaluations")),
                "candidates": num(p.get("candidates")),
                "verified": num(art.get("verified")) if isinstance(art, dict) and "verified" in art else "—",
                "findings": by_probe.get(p.get("probe"), 0),
                "seconds": num(p.get("seconds"), 3),
            }
        )
    return {
        "text": _after_outcome(str(report.get("verdict", "")), outcome_of(report)),
        "css": kind,
        "outcome": outcome_of(report),
        "badge": BADGES[kind],
        "basis": outcome_lines(report),
        "lines": lines,
        "regions": regions,
        "checks": checks,
        "errors": report.get("errors") or [],
    }


def _after_outcome(verdict: str, outcome: str) -> str:
    """The verdict without its leading outcome word (``PASS (certified): …`` → ``…``): the banner shows
    the outcome large beside it."""
    head, sep, rest = verdict.partition(": ")
    return rest if sep and head.split(" ")[0] == outcome else verdict


def region_row(r: dict) -> dict[str, Any]:
    """One blind region as the report's tables show it."""
    split = r.get("severity_counts") or {}
    label = str(r.get("label", ""))
    return {
        "label": label,
        "anchor": "region-" + label.lstrip("#"),
        "severity": r.get("severity"),
        "summary": r.get("summary", r.get("kind", "")),
        "witnesses": num(r.get("witnesses")),
        "split": " · ".join(f"{num(n)} {s}" for s, n in split.items() if n),
        "distance": span(r.get("distance_ratio_min"), r.get("distance_ratio_max")),
        "loss": num(r.get("loss_ratio_min"), 3),
        "probes": ", ".join(r.get("probes") or []),
    }


def model_view(report: dict) -> dict[str, Any]:
    m, d, t = report.get("model") or {}, report.get("data") or {}, report.get("thresholds") or {}
    layers = ", ".join(f"{k} × {v}" for k, v in (m.get("layers") or {}).items()) or "—"
    split = (
        f"encoder {m.get('encoder')}, decoder {m.get('decoder')}, latent shape {m.get('latent_shape')}"
        if m.get("latent_shape")
        else "no encoder/decoder split found (latent-space checks cannot run)"
    )
    model_rows = (
        [
            ("format", m.get("format")),
            ("source", m.get("source")),
            ("parameters", num(m.get("n_parameters"))),
            ("layers", layers),
            ("activations", ", ".join(m.get("activations") or []) or "none"),
            (
                "piecewise linear",
                "yes (ReLU-type; far-field certificates apply)" if m.get("piecewise_linear") else "no",
            ),
            ("latent", split),
            ("input shape", m.get("input_shape")),
            ("preprocessing", m.get("preprocessing")),
            ("device / dtype", f"{m.get('device')} / {m.get('dtype')}"),
        ]
        + [("note", n) for n in m.get("notes") or []]
        + ([("unrecognised ops", ", ".join(m["unknown_ops"]))] if m.get("unknown_ops") else [])
    )
    anomalies = d.get("anomalies") or {}
    data_rows = [
        ("normal data", d.get("source")),
        ("samples", num(d.get("n_samples"))),
        ("split", f"{num(t.get('n_reference'))} reference / {num(t.get('n_heldout'))} held-out"),
        ("sample shape", d.get("sample_shape")),
        ("dtype", d.get("dtype")),
        ("value range", " … ".join(num(v) for v in d.get("value_range") or []) or "—"),
        (
            "your anomalies",
            f"{num(anomalies.get('n_samples'))} from {anomalies.get('source')}"
            if anomalies
            else "none given (--anomalies)",
        ),
        ("verification", f"every finding recomputed in {d.get('verification_dtype', 'float64')} on the CPU"),
    ]
    dom = t.get("domain") or {}
    q = t.get("heldout_loss_quantiles") or {}
    thresholds = [
        (
            "τ_min",
            num(t.get("tau_min")),
            "the smallest loss of any normal sample: an input below it looks more normal than every normal sample",
        ),
        ("τ_op", num(t.get("tau_op")), f"the operating threshold: {t.get('tau_op_source', '')}"),
        ("s", num(t.get("scale")), f"distance scale: {t.get('scale_definition', '')}"),
        (
            "δ",
            num(t.get("min_distance")),
            f"an input counts as far when its distance to every normal sample is at "
            f"least δ: {t.get('min_distance_source', '')}",
        ),
        ("domain", _domain_text(dom), dom.get("reason", "")),
        (
            "held-out losses",
            f"min {num(q.get('min'))} · median {num(q.get('median'))} · p99 {num(q.get('p99'))} · "
            f"max {num(q.get('max'))}",
            "for scale: where the normal data sits",
        ),
    ]
    return {"model_rows": model_rows, "data_rows": data_rows, "thresholds": thresholds}


def _domain_text(dom: dict) -> str:
    if dom.get("low") is None or dom.get("high") is None:
        return "unbounded"
    return f"[{num(dom.get('low'))}, {num(dom.get('high'))}]"


def losses_view(report: dict) -> dict[str, Any]:
    t = report.get("thresholds") or {}
    heldout = t.get("heldout_loss_sample")
    findings = [f.get("loss") for f in report.get("findings") or [] if f.get("objective", "recon") == "recon"]
    anomalies = ((report.get("data") or {}).get("anomalies") or {}).get("loss_sample")
    if not heldout:
        return {"note": "This report holds no held-out losses (it was written by an older aeaudit); no histogram."}
    groups = {"held-out normal": heldout, "findings": findings, "user anomalies": anomalies}
    notes = []
    if not findings:
        notes.append("No findings to show.")
    if not anomalies:
        notes.append("No anomalies of your own were given (--anomalies).")
    if len(heldout) < (t.get("n_heldout") or 0):
        notes.append(
            f"Held-out losses are drawn from {len(heldout)} evenly spaced quantiles of "
            f"{num(t.get('n_heldout'))} samples."
        )
    return {
        "figure": safe_figure(
            "loss histogram", plots.loss_histogram, groups, to_float(t.get("tau_min")), to_float(t.get("tau_op"))
        ),
        "notes": notes,
    }


def _series(obj: Any) -> dict | None:
    """A ``{"distance": [...], "loss": [...]}`` series, if ``obj`` is or holds one."""
    if isinstance(obj, dict):
        if isinstance(obj.get("distance"), list) and isinstance(obj.get("loss"), list):
            return obj
        if isinstance(obj.get("series"), dict):
            return _series(obj["series"])
    return None


# scalar facts an analytic check may store in its artifacts, with the words the report uses for them
ANALYTIC_FACTS = (
    ("affine", "the model is affine"),
    ("max_relative_deviation", "deviation from affinity"),
    ("blind_dimension", "blind subspace dimension"),
    ("unbounded_dimension", "unbounded blind directions"),
    ("eigenvalues_near_1", "eigenvalues near 1"),
    ("principal_angles_to_pca_deg", "angles to the PCA plane (°)"),
    ("offset_condition", "offset condition holds"),
    ("certificates_apply", "certificates apply"),
    ("d", "PCA components"),
    ("explained_variance_ratio", "variance explained"),
    ("max_pca_loss", "largest PCA loss on its plane"),
    ("model_loss_min_at_points", "model's smallest loss there"),
)
RAY_PRIORITY = 10  # rays drawn per check: the most blind first


FACT_DIGITS = {"eigenvalues_near_1": 7}  # 0.9997 vs 1 is the point: a near-1 eigenvalue bounds the blind ray


def _fact(key: str, value: Any) -> str:
    digits = FACT_DIGITS.get(key, 3)
    if isinstance(value, list):
        return ", ".join(num(v, digits) for v in value[:6]) + (" …" if len(value) > 6 else "")
    return num(value)


def certificates_view(report: dict) -> dict[str, Any]:
    t = report.get("thresholds") or {}
    analytic = probes_of(report, "analytic")
    artifacts = report.get("artifacts") or {}
    certs = [(i, f) for i, f in enumerate(report.get("findings") or []) if f.get("kind") == "certificate"]
    checks = []
    for p in analytic:
        if p.get("probe") == "certify":  # the Certification section shows it in full
            continue
        art = artifacts.get(p.get("probe"))
        art = art if isinstance(art, dict) else {}
        facts = [(label, _fact(key, art[key])) for key, label in ANALYTIC_FACTS if key in art and art[key] is not None]
        by_source = art.get("summary") if isinstance(art.get("summary"), dict) else {}
        sources = [
            {
                "source": k,
                "rays": num(v.get("rays")),
                "unbounded": num(v.get("unbounded")),
                "growth": num(v.get("median_growth_exponent"), 3),
            }
            for k, v in by_source.items()
            if isinstance(v, dict)
        ]
        checks.append(
            {
                "probe": p.get("probe"),
                "note": probe_note(p),
                "facts": facts,
                "sources": sources,
                "notes": [n for n in art.get("notes") or [] if isinstance(n, str) and n not in (p.get("reason") or "")],
            }
        )
    rows = []
    for i, f in certs:
        det = f.get("details") or {}
        rows.append(
            {
                "label": finding_label(i),
                "probe": f.get("probe"),
                "severity": f.get("severity"),
                "unbounded": "yes" if det.get("unbounded") else "no",
                "blind_distance": num(det.get("blind_distance_ratio", f.get("distance_ratio")), 3),
                "distance_ratio": num(f.get("distance_ratio")),
                "loss": num(f.get("loss")),
                "loss_ratio": num(f.get("loss_ratio")),
                "growth": num(det.get("growth_exponent"), 3),
            }
        )
    series = []
    for p in analytic:
        series += _ray_series(p.get("probe"), artifacts.get(p.get("probe")))
    drawn = {s.get("probe") for s in series}
    for i, f in certs:  # a certificate whose check stored no per-ray series still gets its own line
        s = _series(f.get("details") or {})
        if s and f.get("probe") not in drawn:
            series.append({"label": f"{finding_label(i)} {f.get('probe')}", **s})
    series += _pca_reference(artifacts)
    figure = None
    if series:
        figure = safe_figure(
            "loss-vs-distance plot",
            plots.loss_vs_distance,
            series,
            to_float(t.get("tau_min")),
            to_float(t.get("tau_op")),
            to_float(t.get("scale"), 1.0),
            to_float(t.get("min_distance")),
        )
    note = None
    if not analytic:
        note = "No analytic check was part of this scan (see --probes)."
    elif not certs:
        note = "No certificate: no analytic check proved a blind direction reaching δ."
    return {"checks": checks, "rows": rows, "figure": figure, "note": note}


def _ray_series(probe: str, artifact: Any) -> list[dict]:
    """The per-ray series an analytic check stored (``rays`` or ``directions``), most blind first."""
    if not isinstance(artifact, dict):
        return []
    rays = [r for r in (artifact.get("rays") or artifact.get("directions") or []) if isinstance(r, dict) and _series(r)]
    order = sorted(
        range(len(rays)),
        key=lambda i: (not rays[i].get("unbounded"), -to_float(rays[i].get("blind_distance_ratio"), 0.0), i),
    )
    out = []
    for i in order[:RAY_PRIORITY]:
        r = rays[i]
        growth = r.get("growth_exponent")
        label = f"{probe}: {r.get('source') or 'direction'} {i + 1}" + (
            f" (slope {num(growth, 2)})" if growth is not None else ""
        )
        out.append({**_series(r), "label": label, "probe": probe, "style": "-" if r.get("unbounded") else "--"})
    return out


def _pca_reference(artifacts: dict) -> list[dict]:
    """Two point sets from the PCA reference: PCA's own loss on its plane and the model's loss there."""
    art = artifacts.get("pca-reference")
    points = [p for p in (art.get("points") or [] if isinstance(art, dict) else []) if isinstance(p, dict)]
    if not points:
        return []
    points = sorted(points, key=lambda p: to_float(p.get("distance"), 0.0))
    dist = [p.get("distance") for p in points]
    return [
        {
            "label": "PCA reference: PCA's loss on its plane",
            "distance": dist,
            "loss": [p.get("pca_loss") for p in points],
            "style": "s",
        },
        {
            "label": "PCA reference: the model's loss there",
            "distance": dist,
            "loss": [p.get("model_loss") for p in points],
            "style": "^",
        },
    ]


def scorers_view(report: dict) -> dict[str, Any]:
    sc = report.get("scorers") or {}
    selected = (report.get("settings") or {}).get("scorers") or []
    table = sc.get("table") or []
    if not table:
        if not selected:
            note = "No scorer was selected (--scorers); nothing compared."
        elif sc.get("status"):
            note = f"The scorer comparison is {sc.get('status')}" + (f": {sc['reason']}" if sc.get("reason") else ".")
        else:
            note = "The scorer comparison did not run (the scan was interrupted, or this aeaudit has no comparison)."
        return {"note": note}
    present = [(k, h) for k, h in SCORER_COLUMNS if any(r.get(k) not in (None, "") for r in table)]
    rows = [[_scorer_cell(k, r.get(k)) for k, _ in present] for r in table]
    roc = sc.get("roc") or {}
    figure = None
    if roc:
        auroc = {r.get("scorer"): r.get("auroc") for r in table if r.get("auroc") is not None}
        figure = safe_figure("ROC curves", plots.roc_curves, roc, auroc)
    notes = []
    if sc.get("status") and sc.get("status") != "complete":
        notes.append(f"Status: {sc['status']}" + (f" — {sc['reason']}" if sc.get("reason") else ""))
    return {"headers": [h for _, h in present], "rows": rows, "figure": figure, "notes": notes}


def _scorer_cell(key: str, value: Any) -> str:
    if key in ("scorer", "verdict", "note"):
        return str(value or "")
    if key == "transferred_detection_rate" and value is not None:
        return f"{100 * to_float(value):.0f} %"
    return num(value, 3)


def reproducibility_view(report: dict) -> dict[str, Any]:
    m, d = report.get("model") or {}, report.get("data") or {}
    tool = report.get("tool") or {}
    env = report.get("environment") or {}
    rows = [
        ("command line", report.get("command_line") or "(library call: aeaudit.scan)"),
        ("settings file", (report.get("settings") or {}).get("config_file") or "none"),
        ("seed", report.get("seed")),
        ("status", report.get("status")),
        ("device", report.get("device")),
        ("aeaudit", tool.get("version")),
        ("schema version", report.get("schema_version")),
        ("model file", m.get("source")),
        ("model SHA-256", m.get("sha256") or "— (not a file)"),
        ("data file", d.get("source")),
        ("data SHA-256", d.get("sha256") or "— (not a file)"),
    ] + [(k, v) for k, v in env.items() if v is not None]
    timings = [(k, num(v, 3)) for k, v in (report.get("timings") or {}).items()]
    settings = json.dumps(report.get("settings") or {}, indent=1, ensure_ascii=False)
    return {"rows": rows, "timings": timings, "settings": settings}
