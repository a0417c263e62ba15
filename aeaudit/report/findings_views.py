"""The report sections about findings: the latent map (Figure 2 of "Autoencoders for anomaly
detection are unreliable") and the gallery, one card per blind region with its other witnesses folded."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import plots
from .certification import examined
from .fmt import num, regions_of
from .views import finding_label, probe_note, probes_of, region_row, safe_figure, to_float

GALLERY_MAX = 12  # cards with pictures: regions (or, in a report without regions, findings)
FOLDED_MAX = 8  # other witnesses drawn under a region's card
FINDINGS_TABLE_MAX = 25  # findings listed in the gallery section's table
TABULAR_FEATURES = 8  # features listed per tabular finding
MAP_WITNESSES = 1000  # findings with a latent code drawn on the map (the best-ranked)


def latent_map_view(report: dict) -> dict[str, Any]:
    artifacts = report.get("artifacts") or {}
    grid_probe = next(
        (
            p
            for p in probes_of(report)
            if isinstance(artifacts.get(p.get("probe")), dict)
            and isinstance(artifacts[p.get("probe")].get("loss_map"), dict)
        ),
        None,
    )
    if grid_probe is None:
        grids = [p for p in probes_of(report) if p.get("probe") == "grid"]
        if grids:
            return {"note": f"The latent grid {probe_note(grids[0])}; no latent map."}
        return {"note": "The latent grid was not part of this scan (see --probes); no latent map."}
    art = artifacts[grid_probe["probe"]]
    lm = art["loss_map"]
    t = report.get("thresholds") or {}
    u, v, losses = lm.get("u"), lm.get("v"), lm.get("losses")
    if not (u and v and losses):
        return {"note": "The latent grid stored no loss map to draw."}
    eps = to_float(lm.get("contour"), to_float(t.get("tau_op")))
    names = list(lm.get("axis_names") or ["z1", "z2"]) + ["", ""]
    marks, dots = _latent_marks(report, lm)
    grid = np.asarray([plots.as_floats(row) for row in losses], dtype=np.float64)
    far = lm.get("far")
    notes = []
    if len(v) > 1 and not np.isfinite(grid).all():  # cut short: draw the coarsest complete lattice, not a speckle
        k = plots.complete_stride(grid)
        done = int(np.isfinite(grid).sum())
        u, v, losses = u[::k], v[::k], [row[::k] for row in losses[::k]]
        far = [row[::k] for row in far[::k]] if far else None
        notes.append(
            f"The budget ran out after {done} of {grid.size} map points; the map is drawn from one grid "
            f"line in {k}, where every point was evaluated ({len(u)} × {len(v)})."
        )
    fig = safe_figure(
        "latent map",
        plots.latent_map,
        u,
        v,
        losses,
        eps,
        far=far,
        normal=lm.get("normal"),
        marks=marks,
        witnesses=dots,
        xlabel=names[0],
        ylabel=names[1],
    )
    if lm.get("kind") == "slice":
        notes.append(
            f"The latent space has {art.get('latent_dim', 'more than 2')} dimensions: the map is the plane through "
            "the normal latents' mean along their two main principal directions (PC1, PC2); the search "
            f"itself covered the whole latent box ({art.get('design', '')})."
        )
    if any(space == "latent" and len((r.get("region") or {}).get("low") or []) <= 2 for space, r in examined(report)):
        notes.append("The certify check's boxes over this latent box are drawn under Certification.")
    if lm.get("objective") not in (None, "recon"):
        notes.append(f"Colour: the score {lm['objective']!r}, not the reconstruction loss.")
    return {"figure": fig, "probe": grid_probe["probe"], "eps": num(eps), "notes": notes, "n_marks": len(marks)}


def _latent_marks(report: dict, lm: dict) -> tuple[list[tuple[float, float, str]], list[tuple[float, float]]]:
    """Map positions ``(z − origin) · basisᵀ`` of each region (labelled ``R1`` …) — its witness, or when
    that has no latent code its best-ranked finding that has one — and of up to ``MAP_WITNESSES``
    findings with a latent code."""
    origin = plots.as_floats(lm.get("origin"))
    basis = plots.as_floats(lm.get("basis"))
    if not origin.size or basis.size % origin.size:
        return [], []
    basis = basis.reshape(-1, origin.size)

    def where(f: dict) -> tuple[float, float] | None:
        z = plots.as_floats(f.get("latent"))
        if z.size != origin.size:
            return None
        uv = (z - origin) @ basis.T
        return float(uv[0]), float(uv[1]) if uv.size > 1 else 0.0

    findings = report.get("findings") or []
    marks = []
    for r in regions_of(report):
        members = [f for f in findings if r.get("id") is not None and (f.get("details") or {}).get("region") == r["id"]]
        spot = next((p for f in [r.get("witness") or {}, *members] if (p := where(f)) is not None), None)
        if spot is not None:
            marks.append((*spot, r.get("label", "")))
    dots = [p for f in findings if (p := where(f)) is not None][:MAP_WITNESSES]
    return marks, dots


def gallery_view(report: dict) -> dict[str, Any]:
    """One card per blind region: its representative witness beside its nearest normal sample and its
    reconstruction, then its other stored witnesses folded."""
    findings = report.get("findings") or []
    regions = regions_of(report)
    table = _findings_table(findings) if findings else {}
    if not regions:
        return {"note": "No blind region found: no findings to show.", **table}
    shape = (report.get("data") or {}).get("sample_shape") or []
    dom = (report.get("thresholds") or {}).get("domain") or {}
    first = next((r["witness"]["x"] for r in regions if (r.get("witness") or {}).get("x") is not None), None)
    image_like = first is not None and plots.to_image(first, shape) is not None
    cards = []
    for r in regions[:GALLERY_MAX]:
        witness = r.get("witness") or {}
        card = _card(r.get("label", ""), witness, shape, dom, image_like)
        card["region"] = region_row(r)
        others = [
            (i, f)
            for i, f in enumerate(findings)
            if r.get("id") is not None and (f.get("details") or {}).get("region") == r["id"] and not _same(f, witness)
        ]
        drawn = [(i, f) for i, f in others if f.get("x") is not None][:FOLDED_MAX]
        card["others"] = [_card(finding_label(i), f, shape, dom, image_like) for i, f in drawn]
        card["others_note"] = _others_note(r, len(others), len(drawn))
        cards.append(card)
    more = len(regions) - len(cards)
    return {
        "image": image_like,
        "cards": cards,
        "regions_more": f"{more} more region(s) in report.json." if more > 0 else None,
        **table,
    }


def _same(f: dict, witness: dict) -> bool:
    return all(f.get(k) == witness.get(k) for k in ("probe", "loss", "distance"))


def _others_note(region: dict, listed: int, drawn: int) -> str:
    total = int(to_float(region.get("witnesses"), 1.0)) - 1
    if total <= 0:
        return "This region has no other witness."
    return (
        f"{total} other witness(es) verified; {listed} kept in report.json after merging near-duplicates, "
        f"{drawn} of them with a stored input drawn here."
    )


def _card(label: str, f: dict, shape: list[int], dom: dict, image_like: bool) -> dict[str, Any]:
    item = {
        "label": label,
        "severity": f.get("severity"),
        "probe": f.get("probe"),
        "kind": f.get("kind"),
        "loss": num(f.get("loss")),
        "loss_ratio": num(f.get("loss_ratio"), 3),
        "loss_ratio_min": num(f.get("loss_ratio_min"), 3),
        "distance": num(f.get("distance")),
        "distance_ratio": num(f.get("distance_ratio"), 3),
    }
    if f.get("x") is None:
        item["figure"] = {"error": "No input stored for this witness."}
    elif image_like:
        item["figure"] = safe_figure(f"gallery image {label}", _gallery_image, f, shape, dom)
    else:
        item["features"] = _tabular_rows(f)
    return item


def _findings_table(findings: list[dict]) -> dict[str, Any]:
    rows = [
        {
            "label": finding_label(i),
            "severity": f.get("severity"),
            "kind": f.get("kind"),
            "probe": f.get("probe"),
            "region": f"R{(f.get('details') or {}).get('region')}" if (f.get("details") or {}).get("region") else "—",
            "loss": num(f.get("loss")),
            "loss_ratio": num(f.get("loss_ratio"), 3),
            "distance_ratio": num(f.get("distance_ratio"), 3),
            "merged": num((f.get("details") or {}).get("merged_duplicates")),
        }
        for i, f in enumerate(findings[:FINDINGS_TABLE_MAX])
    ]
    more = len(findings) - len(rows)
    return {"table": rows, "more": f"{more} more finding(s) are listed in report.json." if more > 0 else None}


def _gallery_image(f: dict, shape: list[int], dom: dict) -> str:
    """The witness, its reconstruction and its nearest normal sample side by side, then the difference."""
    x = plots.to_image(f["x"], shape)
    panels = [("input", x)]
    rec = plots.to_image(f.get("reconstruction"), shape) if f.get("reconstruction") is not None else None
    near = plots.to_image(f.get("nearest"), shape) if f.get("nearest") is not None else None
    if rec is not None:
        panels.append(("reconstruction", rec))
    if near is not None:
        panels.append(("nearest normal", near))
    if rec is not None:
        panels.append(("|input − recon.|", abs(x - rec)))
    return plots.gallery_image(panels, dom.get("low"), dom.get("high"))


def _tabular_rows(f: dict) -> list[dict[str, str]]:
    x = plots.as_floats(f.get("x"))
    rec = plots.as_floats(f.get("reconstruction")) if f.get("reconstruction") is not None else None
    near = plots.as_floats(f.get("nearest")) if f.get("nearest") is not None else None
    order = (
        sorted(range(len(x)), key=lambda j: -abs(x[j] - near[j]))
        if near is not None and len(near) == len(x)
        else sorted(range(len(x)), key=lambda j: -abs(x[j]))
    )
    rows = []
    for j in order[:TABULAR_FEATURES]:
        rows.append(
            {
                "feature": str(j),
                "value": num(x[j]),
                "nearest": num(near[j]) if near is not None and len(near) == len(x) else "—",
                "departure": num(x[j] - near[j]) if near is not None and len(near) == len(x) else "—",
                "reconstruction": num(rec[j]) if rec is not None and len(rec) == len(x) else "—",
            }
        )
    return rows
