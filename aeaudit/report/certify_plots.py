"""Figures of the certify check (HTML report): its boxes over a 2-D plane (input space or the latent
map) and its intervals on a line, coloured by state. Shared plumbing (style, canvas, data URIs) is
:mod:`aeaudit.report.plots`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .plots import (
    LOW_LOSS_COLOUR,
    NORMAL_COLOUR,
    TAU_OP_COLOUR,
    as_floats,
    data_uri,
    figure_style,
    new_figure,
    positive_floor,
)

# Drawing order: the normal data's neighbourhood first, what matters most (a blind spot) last. Blue
# (proven, as the certified banner), grey, amber and red stay apart for colour-blind readers too;
# no hatching: it costs seconds per thousand boxes.
CERTIFY_STYLES = {
    "near": {"facecolor": "#d4d4d4", "edgecolor": "#a8a8a8"},
    "certified": {"facecolor": "#6fa8dc", "edgecolor": "#1f5f99"},
    "unknown": {"facecolor": "#fdc04a", "edgecolor": "#a86b00"},
    "falsified": {"facecolor": "#d7191c", "edgecolor": "#67000d"},
}
CERTIFY_POINT_COLOUR = "#111111"
ASPECT_MAX = 3.0  # a box plane at most this elongated is drawn to scale
SPOTTED = ("unknown",)  # states whose tiny boxes also get a dot at their centre: unresolved spots must not vanish
TINY = 0.01  # a box narrower than this share of the plot, in some dimension, is hard to see


def _tiny_centres(lo: np.ndarray, hi: np.ndarray, low: Any, high: Any) -> np.ndarray:
    """Centres of the boxes narrower than ``TINY`` of the plot in some dimension."""
    tiny = ((hi - lo) < TINY * (as_floats(high) - as_floats(low))).any(axis=1)
    return (lo[tiny] + hi[tiny]) / 2


def _box_legend(labels: dict[str, str]) -> list:
    from matplotlib.patches import Patch

    return [
        Patch(**{k: v for k, v in CERTIFY_STYLES[s].items()}, linewidth=0.8, label=labels[s])
        for s in ("certified", "near", "falsified", "unknown")
        if s in labels
    ]


def certify_boxes(
    boxes: dict[str, tuple[np.ndarray, np.ndarray]],
    low: Sequence[float],
    high: Sequence[float],
    labels: dict[str, str],
    *,
    field: dict[str, Any] | None = None,
    normal: Any = None,
    points: Any = None,
    normal_label: str = "normal data",
    xlabel: str = "x₁",
    ylabel: str = "x₂",
    title: str = "",
) -> str:
    """The certify check's boxes over a 2-D plane (input space or latent map), one polygon
    collection per state, so thousands of boxes draw in one call each. ``boxes[state] = (lo, hi)``
    with ``[N, 2]`` corners; ``field``: the latent map (``u``, ``v``, ``losses``, ``eps``, ``far``)
    whose τ_op contour and δ edge are drawn over the boxes; ``normal``: normal points; ``points``:
    the counterexamples."""
    from matplotlib.collections import PolyCollection
    from matplotlib.lines import Line2D

    span = as_floats(high) - as_floats(low)
    to_scale = max(span) <= ASPECT_MAX * min(span)  # distances are Euclidean: keep them true where that fits
    # to scale, the figure's height follows the plane's shape (title, axis and legend take about 2 in)
    height = float(np.clip(4.2 * span[1] / span[0] + 2.0, 3.6, 7.2)) if to_scale else 6.0
    with figure_style():
        fig = new_figure(5.8, height)
        ax = fig.add_subplot()
        for state, style in CERTIFY_STYLES.items():
            lo, hi = boxes.get(state, (np.empty((0, 2)), np.empty((0, 2))))
            if not len(lo):
                continue
            verts = np.stack(
                [
                    np.stack([lo[:, 0], lo[:, 1]], 1),
                    np.stack([hi[:, 0], lo[:, 1]], 1),
                    np.stack([hi[:, 0], hi[:, 1]], 1),
                    np.stack([lo[:, 0], hi[:, 1]], 1),
                ],
                axis=1,
            )
            width = 0.5 if len(lo) < 400 else 0.2
            ax.add_collection(PolyCollection(verts, linewidths=width, rasterized=True, **style))
            if state in SPOTTED:  # boxes too small to see still show where they are
                centre = _tiny_centres(lo, hi, low, high)
                ax.scatter(
                    centre[:, 0],
                    centre[:, 1],
                    s=9,
                    c=style["facecolor"],
                    edgecolors=style["edgecolor"],
                    lw=0.4,
                    zorder=5,
                )
        handles = _box_legend(labels)
        if field is not None:
            handles += _field_contours(ax, field)
        if normal is not None and len(normal):
            pts = np.asarray([as_floats(p) for p in normal], dtype=np.float64)
            ax.scatter(pts[:, 0], pts[:, 1], s=3, c=NORMAL_COLOUR, linewidths=0, alpha=0.8, zorder=3)
            handles.append(Line2D([], [], ls="none", marker="o", ms=3, color=NORMAL_COLOUR, label=normal_label))
        if points is not None and len(points):
            pts = np.asarray(points, dtype=np.float64)
            ax.scatter(pts[:, 0], pts[:, 1], s=14, marker="x", c=CERTIFY_POINT_COLOUR, linewidths=0.8, zorder=4)
            handles.append(
                Line2D([], [], ls="none", marker="x", ms=5, color=CERTIFY_POINT_COLOUR, label="counterexamples")
            )
        lo, hi = as_floats(low), as_floats(high)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        if to_scale:
            ax.set_aspect("equal")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=9)
        return data_uri(fig, "png", dpi=110)


def _field_contours(ax, field: dict[str, Any]) -> list:
    """The latent map's loss = τ_op contour and the edge of the part within δ of the normal data."""
    from matplotlib.lines import Line2D

    xs, ys = as_floats(field.get("u")), as_floats(field.get("v"))
    grid = np.asarray([as_floats(row) for row in field.get("losses") or []], dtype=np.float64)
    handles = []
    if grid.shape != (len(ys), len(xs)) or len(ys) < 2:
        return handles
    low = (np.isfinite(grid) & (grid < field["eps"])).astype(float)
    if 0 < low.sum() < low.size:
        ax.contour(xs, ys, low, levels=[0.5], colors=[LOW_LOSS_COLOUR], linewidths=1.1, zorder=2)
        handles.append(Line2D([], [], color=LOW_LOSS_COLOUR, lw=1.1, label="latent map: loss = τ_op"))
    far = field.get("far")
    far_grid = np.asarray([as_floats(row) for row in far], dtype=np.float64) if far else None
    if far_grid is not None and far_grid.shape == grid.shape and 0 < (far_grid > 0).sum() < far_grid.size:
        ax.contour(
            xs, ys, (far_grid > 0).astype(float), levels=[0.5], colors=[LOW_LOSS_COLOUR], linewidths=1.1, linestyles=":"
        )
        handles.append(
            Line2D([], [], color=LOW_LOSS_COLOUR, lw=1.1, ls=":", label="latent map: δ from the normal data")
        )
    return handles


def certify_intervals(
    boxes: dict[str, tuple[np.ndarray, np.ndarray]],
    low: float,
    high: float,
    labels: dict[str, str],
    *,
    curve: tuple[Any, Any] | None = None,
    eps: float | None = None,
    normal: Any = None,
    points: Any = None,
    normal_label: str = "normal data",
    xlabel: str = "z₁",
    title: str = "",
) -> str:
    """The certify check's intervals along a 1-D axis: a strip of the intervals in their states, with
    the normal points and the counterexamples, under the latent map's loss curve (``curve = (z, loss)``)
    and τ_op (``eps``) when given."""
    from matplotlib.lines import Line2D

    with figure_style():
        fig = new_figure(6.2, 3.8 if curve is not None else 2.2)
        if curve is not None:
            top, strip = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        else:
            top, strip = None, fig.add_subplot()
        for state, style in CERTIFY_STYLES.items():
            lo, hi = boxes.get(state, (np.empty((0, 1)), np.empty((0, 1))))
            if len(lo):
                strip.broken_barh(list(zip(lo[:, 0], hi[:, 0] - lo[:, 0])), (0.0, 1.0), linewidth=0.3, **style)
                if state in SPOTTED:
                    centre = _tiny_centres(lo, hi, [low], [high])[:, 0]
                    strip.plot(
                        centre,
                        np.full(len(centre), 0.55),
                        "o",
                        ms=2.5,
                        mfc=style["facecolor"],
                        mec=style["edgecolor"],
                        mew=0.3,
                    )
        handles = _box_legend(labels)
        if normal is not None and len(normal):
            pts = as_floats([as_floats(p)[0] for p in normal])
            strip.plot(pts, np.full(len(pts), 0.8), "|", color=NORMAL_COLOUR, ms=9, alpha=0.7)
            handles.append(Line2D([], [], ls="none", marker="|", ms=7, color=NORMAL_COLOUR, label=normal_label))
        if points is not None and len(points):
            pts = np.asarray(points, dtype=np.float64)[:, 0]
            strip.plot(pts, np.full(len(pts), 0.35), "x", color=CERTIFY_POINT_COLOUR, ms=6)
            handles.append(
                Line2D([], [], ls="none", marker="x", ms=5, color=CERTIFY_POINT_COLOUR, label="counterexamples")
            )
        strip.set_ylim(0, 1)
        strip.set_yticks([])
        strip.set_xlim(float(low), float(high))
        strip.set_xlabel(xlabel)
        if top is not None:
            z, loss = as_floats(curve[0]), as_floats(curve[1])
            ok = np.isfinite(loss)
            top.plot(z[ok], np.maximum(loss[ok], positive_floor(loss[ok], as_floats([eps]))), color="#2c3e50", lw=1.2)
            handles.append(Line2D([], [], color="#2c3e50", lw=1.2, label="latent map: loss of the decode"))
            if eps is not None:
                top.axhline(eps, color=TAU_OP_COLOUR, lw=0.9, ls="--")
                handles.append(Line2D([], [], color=TAU_OP_COLOUR, lw=0.9, ls="--", label=f"τ_op = {eps:.3g}"))
            top.set_yscale("log")
            top.set_ylabel("loss of the decode (log)")
            top.set_title(title)
        else:
            strip.set_title(title)
        strip.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=2, fontsize=9)
        return data_uri(fig, "png", dpi=110)
