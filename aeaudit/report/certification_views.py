"""The HTML report's certification section: per region the certify check examined, what it was,
what share of it each box state covers, the effort, the counterexamples and a picture of the boxes
(over the input plane for 2-D data, over the latent map for a 1-D or 2-D latent space); and why a
region was not examined."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import certify_plots, plots
from .certification import (
    SPACE_NAMES,
    STATE_MEANINGS,
    STATES,
    box_text,
    examined,
    is_proven,
    percent,
    proof_sentence,
    skipped,
)
from .fmt import num
from .views import probe_note, probes_of, safe_figure, to_float

COUNTEREXAMPLES_LISTED = 5  # rows of the counterexample table (report.json keeps up to 256)
HINTS = {  # for a region too large to examine
    "input": "raise it with --probe-settings certify.max_input_features=N (the cost grows exponentially with it)",
    "latent": "raise it with --probe-settings certify.max_latent_dims=N (the cost grows exponentially with it)",
}


def box_corners(low: Any, high: Any, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The float64 corners ``(lo, hi)`` ``[N, d]`` of boxes stored as integer ``level`` and ``index`` per
    side: ``[low + i·(high − low)·2^−ℓ, low + (i + 1)·(high − low)·2^−ℓ]`` (the encoding in report.json)."""
    low, high = plots.as_floats(low), plots.as_floats(high)
    levels = np.asarray(entry.get("level") or [], dtype=np.int64).reshape(-1, low.size)
    index = np.asarray(entry.get("index") or [], dtype=np.int64).reshape(-1, low.size)
    side = np.ldexp(np.broadcast_to(high - low, levels.shape), -levels)
    return low + index * side, low + (index + 1) * side


def certification_view(report: dict[str, Any]) -> dict[str, Any]:
    probe = next((p for p in probes_of(report) if p.get("probe") == "certify"), None)
    done = examined(report)
    regions = [_region(report, space, result) for space, result in done]
    not_examined = [
        {"space": SPACE_NAMES.get(space, space), "why": why, "hint": HINTS[space] if "> max_" in why else ""}
        for space, why in skipped(report).items()
    ]
    note = None
    if probe is None and not done:
        note = (
            "The certify check was not part of this scan (see --probes): no region was examined, so nothing "
            "here is proven; a PASS is search evidence, not proof."
        )
    elif not done:
        note = f"No region was examined — certify: {probe_note(probe)}."
    return {"regions": regions, "skipped": not_examined, "note": note}


def _region(report: dict[str, Any], space: str, result: dict[str, Any]) -> dict[str, Any]:
    r = result.get("region") or {}
    shares, counts = result.get("shares") or {}, result.get("counts") or {}
    proven = is_proven(result)
    t = report.get("thresholds") or {}
    scale = to_float(t.get("scale"), 1.0)
    return {
        "space": space,
        "anchor": f"certify-{space}",
        "title": SPACE_NAMES[space].capitalize(),
        "proven": proven,
        "headline": f"Proven: {proof_sentence(space, result)}." if proven else _not_proven(shares, counts),
        "examined": f"The question: {_question(space, r)}",
        "facts": [
            ("box", box_text(r.get("low"), r.get("high"))),
            ("what the box is", r.get("description") or "—"),
            ("region, formally", r.get("region") or "—"),
            (
                "τ_op, δ",
                f"{num(r.get('tau_op'))}, {num(r.get('delta'))} ({_ratio(r.get('delta'), scale)}·s)",
            ),
            ("bounds", f"{result.get('bounds') or result.get('method')}; split: {result.get('split', '—')}"),
            (
                "effort",
                f"{num(result.get('evaluations'))} box evaluations, {num(result.get('pgd_points'))} falsification "
                f"points, {num(result.get('seconds'), 3)} s",
            ),
            ("stopped", _stopped(result)),
        ],
        "shares": [
            {
                "state": s,
                "share": percent(shares.get(s)),
                "boxes": num(counts.get(s)),
                "meaning": STATE_MEANINGS[s],
            }
            for s in STATES
        ],
        "counterexamples": _counterexamples(result, scale),
        **_figure(report, space, result),
    }


def _not_proven(shares: dict[str, Any], counts: dict[str, Any]) -> str:
    open_ = [
        f"{percent(shares.get(state))} of the box is {words} ({num(counts.get(state))} boxes)"
        for state, words in (("falsified", "falsified: it holds blind spots"), ("unknown", "unknown"))
        if counts.get(state)
    ]
    return (
        f"Not proven: {'; '.join(open_)}. The rest is certified ({percent(shares.get('certified'))}) or near "
        f"({percent(shares.get('near'))})."
    )


def _question(space: str, r: dict[str, Any]) -> str:
    tau, delta = num(r.get("tau_op")), num(r.get("delta"))
    box = f"{r.get('description') or 'the box'} {box_text(r.get('low'), r.get('high'))}"
    if space == "latent":
        return (
            f"can a latent code in {box} decode to an input that lies at least δ = {delta} from every normal sample "
            f"and reconstructs with a loss ({r.get('loss', 'mse')}) of at most τ_op = {tau}? (Latent codes whose "
            "decode lies within δ of the normal data are outside the question.)"
        )
    return (
        f"can an input in {box} that lies at least δ = {delta} from every normal sample reconstruct with a loss "
        f"({r.get('loss', 'mse')}) of at most τ_op = {tau}? (Inputs within δ of the normal data are outside the "
        "question: the detector may accept them.)"
    )


def _stopped(result: dict[str, Any]) -> str:
    reason = result.get("stop_reason") or "—"
    if result.get("cut_short"):
        return f"cut short ({reason}): the boxes left are unknown"
    return "no: every box was resolved" if reason == "complete" else f"{reason}: the boxes left are unknown"


def _ratio(value: Any, unit: float) -> str:
    return num(to_float(value) / unit, 3) if unit > 0 else "—"


def _counterexamples(result: dict[str, Any], scale: float) -> dict[str, Any]:
    listed = [c for c in result.get("counterexamples") or [] if isinstance(c, dict)]
    tau = to_float((result.get("region") or {}).get("tau_op"))
    found = int(to_float(result.get("counterexamples_found"), len(listed)))
    rows = [
        {
            "loss": num(c.get("loss")),
            "loss_ratio": _ratio(c.get("loss"), tau),
            "distance_ratio": _ratio(c.get("distance"), scale),
            "nearest": num(c.get("nearest_index")),
        }
        for c in listed[:COUNTEREXAMPLES_LISTED]
    ]
    if not found:
        note = "No counterexample: no verified input with loss ≤ τ_op was found ≥ δ from the normal data."
    else:
        note = (
            f"{num(found)} verified counterexample(s) found, {len(listed)} kept in report.json (lowest loss first); "
            f"the lowest {len(rows)} below. They are ordinary findings of kind counterexample: see Blind regions."
        )
    return {"rows": rows, "note": note}


CAPTION = (
    "Every box the check ended with, coloured by its state; together they tile the examined box. A falsified box "
    "holds at least one verified blind spot (crosses: the counterexamples), not necessarily everywhere in it."
)
CAPTIONS = {
    ("input", 2, False): "The grey near boxes cover the neighbourhood of the normal data (within δ of it).",
    ("latent", 2, True): "Lines from the latent map: loss = τ_op (solid) and, where the map has one, the edge of the "
    "part whose decodes lie within δ of the normal data (dotted); blue dots: normal latents.",
    ("latent", 1, True): "Top: the latent map's loss of the decode along the latent axis, τ_op dashed. Bottom: the "
    "intervals, with the normal latents (ticks) and the counterexamples (crosses).",
}


def _figure(report: dict[str, Any], space: str, result: dict[str, Any]) -> dict[str, Any]:
    """``{"figure", "caption"}``: the boxes over the input plane (2-D input) or the latent map (1-D or
    2-D latent), or a note saying why they are not drawn."""
    r, listing = result.get("region") or {}, result.get("boxes") or {}
    d = plots.as_floats(r.get("low")).size
    if d > 2:
        note = f"The boxes are not drawn: the {SPACE_NAMES[space]} has {d} dimensions (drawn for 1 or 2)."
        return {"figure": {"error": note}, "caption": ""}
    if listing.get("listed") is False or not any(isinstance(listing.get(s), dict) for s in STATES):
        note = f"The boxes are not listed in report.json ({listing.get('reason', 'no boxes')})."
        return {"figure": {"error": note}, "caption": ""}
    boxes = {
        s: box_corners(r.get("low"), r.get("high"), listing[s]) for s in STATES if isinstance(listing.get(s), dict)
    }
    shares, counts = result.get("shares") or {}, result.get("counts") or {}
    labels = {s: f"{s} — {percent(shares.get(s))}, {num(counts.get(s))} box(es)" for s in STATES}
    key = "latent" if space == "latent" else "x"
    points = [plots.as_floats(c.get(key)) for c in result.get("counterexamples") or [] if c.get(key) is not None]
    points = [p for p in points if p.size == d]
    lm = _loss_map(report, d) if space == "latent" else None
    title = (
        f"certify boxes over the {'latent map' if space == 'latent' else 'input plane'}: "
        f"{percent(result.get('certified_or_near', shares.get('certified', 0) + shares.get('near', 0)))} "
        "certified or near"
    )
    what = f"certify boxes ({SPACE_NAMES[space]})"
    names = ("z₁", "z₂") if space == "latent" else ("x₁ (feature 0)", "x₂ (feature 1)")
    caption = f"{CAPTION} {CAPTIONS.get((space, d, lm is not None), '')}".strip()
    tau = to_float(r.get("tau_op"))
    if d == 1:
        figure = safe_figure(
            what,
            certify_plots.certify_intervals,
            boxes,
            plots.as_floats(r.get("low"))[0],
            plots.as_floats(r.get("high"))[0],
            labels,
            curve=(lm["u"], lm["losses"][0]) if lm else None,
            eps=tau,
            normal=lm.get("normal") if lm else None,
            points=points,
            normal_label="normal latents",
            xlabel=names[0],
            title=title,
        )
    else:
        figure = safe_figure(
            what,
            certify_plots.certify_boxes,
            boxes,
            r.get("low"),
            r.get("high"),
            labels,
            field={**lm, "eps": tau} if lm else None,
            normal=lm.get("normal") if lm else result.get("normal"),
            points=points,
            normal_label="normal latents" if lm else "normal samples",
            xlabel=names[0],
            ylabel=names[1],
            title=title,
        )
    return {"figure": figure, "caption": caption}


def _loss_map(report: dict[str, Any], d: int) -> dict[str, Any] | None:
    """The latent grid's map when it is drawn in the latent coordinates themselves (a 1-D or 2-D
    latent space: identity basis, no offset), so the certify boxes lie on it as they are."""
    for p in probes_of(report):
        art = (report.get("artifacts") or {}).get(p.get("probe"))
        lm = art.get("loss_map") if isinstance(art, dict) else None
        if not isinstance(lm, dict) or lm.get("kind") != {1: "line", 2: "grid"}.get(d):
            continue
        origin, basis = plots.as_floats(lm.get("origin")), plots.as_floats(lm.get("basis"))
        if origin.size == d and np.allclose(origin, 0) and np.allclose(basis, np.eye(d).ravel()):
            return lm
    return None
