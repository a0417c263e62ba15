"""Figures of the HTML report, each returned as a ``data:`` URI (nothing external to load).

matplotlib is imported inside the functions (a scan without a report never pays for it), and
figures are drawn on ``Figure`` objects with the Agg canvas, never through pyplot, so the
caller's backend and global state stay untouched. Every figure is drawn under matplotlib's
default style with fixed SVG ids and no date, so the same report dict gives the same bytes.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

TAU_MIN_COLOUR = "#1f3a93"
TAU_OP_COLOUR = "#c0392b"
BLIND_COLOUR = "#d7191c"  # the latent map's blind region: the one saturated colour on it
LOW_LOSS_COLOUR = "#3a3a3a"
NORMAL_COLOUR = "#2166ac"
GROUP_COLOURS = {"held-out normal": "#7f8c8d", "findings": "#c0392b", "user anomalies": "#8e44ad"}
MAX_SERIES = 12  # rays drawn in one loss-vs-distance plot; more would be unreadable
FLOOR_BELOW_TAU = 1e-8  # the loss-vs-distance plot shows at most 8 decades below τ


@contextmanager
def figure_style() -> Iterator[None]:
    import matplotlib
    import matplotlib.style

    with (
        matplotlib.style.context("default"),
        matplotlib.rc_context(
            {
                "svg.hashsalt": "aeaudit",
                "svg.fonttype": "none",
                "font.size": 9,
                "axes.titlesize": 10,
                "axes.spines.top": False,
                "axes.spines.right": False,
                "legend.frameon": False,
            }
        ),
    ):
        yield


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def data_uri(fig, fmt: str = "svg", dpi: int = 100) -> str:
    buf = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    fig.savefig(buf, format=fmt, dpi=dpi, metadata=metadata)
    mime = "image/svg+xml" if fmt == "svg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def as_floats(values: Any) -> np.ndarray:
    """Numbers from report.json (where non-finite values are the strings "inf"/"nan") as a float array."""
    if values is None:
        return np.empty(0)
    return np.asarray(
        [float(v) if v is not None else math.nan for v in np.ravel(np.asarray(values, dtype=object))], dtype=np.float64
    )


def positive_floor(*arrays: np.ndarray) -> float:
    """A value below every positive loss, where zero losses are drawn on a log axis."""
    pos = np.concatenate([a[np.isfinite(a) & (a > 0)] for a in arrays] or [np.empty(0)])
    return float(pos.min()) / 10 if len(pos) else 1e-12


def loss_histogram(groups: dict[str, Sequence[float]], tau_min: float, tau_op: float) -> str:
    """Histograms of the loss per group on a log axis (each group normalised to its own size),
    with τ_min and τ_op marked; groups of fewer than 20 values are also drawn as ticks."""
    with figure_style():
        data = {k: as_floats(v) for k, v in groups.items() if v is not None and len(v)}
        data = {k: v[np.isfinite(v)] for k, v in data.items()}
        data = {k: v for k, v in data.items() if len(v)}
        floor = positive_floor(*data.values(), np.asarray([tau_min, tau_op], dtype=float))
        lo = min([floor] + [float(np.maximum(v, floor).min()) for v in data.values()])
        hi = max([tau_op * 1.5] + [float(v.max()) for v in data.values()])
        bins = np.geomspace(lo, hi * 1.0001, 46)
        fig = new_figure(7.2, 2.8)
        ax = fig.add_subplot()
        for name, v in data.items():
            colour = GROUP_COLOURS.get(name, None)
            v = np.maximum(v, floor)
            ax.hist(
                v,
                bins=bins,
                weights=np.full(len(v), 1.0 / len(v)),
                histtype="stepfilled" if name == "held-out normal" else "step",
                alpha=0.45 if name == "held-out normal" else 1.0,
                lw=1.6,
                color=colour,
                label=f"{name} (n={len(v)})",
            )
            if len(v) < 20:
                ax.plot(
                    v,
                    np.full(len(v), -0.03),
                    "|",
                    color=colour,
                    ms=12,
                    mew=1.6,
                    transform=ax.get_xaxis_transform(),
                    clip_on=False,
                )
        ax.axvline(tau_min, color=TAU_MIN_COLOUR, ls="--", lw=1.2, label=f"τ_min = {tau_min:.3g}")
        ax.axvline(tau_op, color=TAU_OP_COLOUR, ls="-", lw=1.2, label=f"τ_op = {tau_op:.3g}")
        ax.set_xscale("log")
        ax.set_xlabel("reconstruction loss L_R (log scale)")
        ax.set_ylabel("fraction of the group")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        return data_uri(fig)


def loss_vs_distance(
    series: Sequence[dict[str, Any]], tau_min: float, tau_op: float, scale: float, min_distance: float
) -> str:
    """Log-log loss along each ray against the distance ratio d/s, with τ_min, τ_op and δ/s marked.

    ``series``: ``[{"label", "distance", "loss", "style"?}]`` with raw distances (divided by s here)."""
    with figure_style():
        fig = new_figure(7.2, 3.2)
        ax = fig.add_subplot()
        prepared = []
        for s in series[:MAX_SERIES]:
            d, loss = as_floats(s.get("distance")), as_floats(s.get("loss"))
            n = min(len(d), len(loss))
            d, loss = d[:n], loss[:n]
            ok = np.isfinite(d) & np.isfinite(loss) & (d > 0)
            if ok.any():
                prepared.append((s, d[ok] / scale, loss[ok]))
        # tiny losses (PCA's own, ~1e-30) would stretch the axis over dozens of decades
        floor = max(
            positive_floor(*[p[2] for p in prepared], np.asarray([tau_min], dtype=float)),
            min(tau_min, tau_op) * FLOOR_BELOW_TAU,
        )
        for s, dr, loss in prepared:
            style = s.get("style", "-")
            if style in ("-", "--", ":", "-."):
                ax.plot(dr, np.maximum(loss, floor), ls=style, marker=".", ms=3, lw=1.2, label=s.get("label", ""))
            else:  # a point set
                ax.plot(
                    dr,
                    np.maximum(loss, floor),
                    ls="none",
                    marker=style,
                    ms=6,
                    mfc="none",
                    mew=1.3,
                    label=s.get("label", ""),
                )
        ax.axhline(max(tau_min, floor), color=TAU_MIN_COLOUR, ls="--", lw=1, label="τ_min")
        ax.axhline(tau_op, color=TAU_OP_COLOUR, lw=1, label="τ_op")
        ax.axvline(min_distance / scale, color="#555", ls=":", lw=1, label="δ (far)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("distance from the normal data, d / s (log)")
        ax.set_ylabel("loss L_R (log)")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
        return data_uri(fig)


def complete_stride(grid: np.ndarray) -> int:
    """The smallest stride ``k`` (a power of two) at which ``grid[::k, ::k]`` has no missing value:
    a search cut short on a coarse-to-fine grid leaves every ``k``-th line complete."""
    k = 1
    while k < max(grid.shape) and not np.isfinite(grid[::k, ::k]).all():
        k *= 2
    return k


def latent_map(
    x: Sequence[float],
    y: Sequence[float],
    losses: Any,
    eps: float,
    *,
    far: Any = None,
    normal: Any = None,
    marks: Sequence[tuple[float, float, str]] = (),
    witnesses: Sequence[tuple[float, float]] = (),
    xlabel: str = "z₁",
    ylabel: str = "z₂",
) -> str:
    """The loss of decoded latents over a 2-D grid (Figure 2 of "Autoencoders for anomaly detection
    are unreliable"), drawn so that the blind region is what the eye meets first: the loss as a
    quiet grey field (log scale, light = low), the loss = ``eps`` contour as a thin line, the edge
    of the part within δ of the normal data (``far`` is 0 there) dotted, normal latents as small
    blue dots, and only the blind part — loss below ``eps`` *and* far — filled red. Findings from
    latent codes are small dark crosses (``witnesses``); ``marks`` labels the regions' witnesses.
    ``losses[i][j]`` belongs to ``(x[j], y[i])``; missing values are blank."""
    from matplotlib.colors import LogNorm
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    with figure_style():
        xs, ys = as_floats(x), as_floats(y)
        grid = np.asarray([as_floats(row) for row in losses], dtype=np.float64)
        floor = positive_floor(grid[np.isfinite(grid)])
        grid = np.where(np.isfinite(grid), np.maximum(grid, floor), np.nan)
        far_grid = np.asarray([as_floats(row) for row in far], dtype=np.float64) if far is not None else None
        if far_grid is not None and far_grid.shape != grid.shape:
            far_grid = None
        if len(ys) == 1:
            return _latent_line(xs, grid[0], eps, far_grid[0] if far_grid is not None else None, normal, marks, xlabel)
        fig = new_figure(6.6, 6.0)
        ax = fig.add_subplot()
        mesh = ax.pcolormesh(
            xs,
            ys,
            grid,
            shading="nearest",
            cmap="Greys",
            alpha=0.55,
            norm=LogNorm(vmin=np.nanmin(grid), vmax=max(np.nanmax(grid), np.nanmin(grid) * 10)),
            rasterized=True,
        )
        fig.colorbar(mesh, ax=ax, label="loss of the decoded point (log)", shrink=0.8)
        low = np.isfinite(grid) & (grid < eps)
        handles = []
        if low.any() and not low.all():
            ax.contour(xs, ys, low.astype(float), levels=[0.5], colors=[LOW_LOSS_COLOUR], linewidths=0.8)
            handles.append(
                Line2D(
                    [], [], color=LOW_LOSS_COLOUR, lw=0.8, label=f"loss = τ_op ({eps:.3g}), the detector's threshold"
                )
            )
        if far_grid is not None and (far_grid > 0).any() and not (far_grid > 0).all():
            ax.contour(
                xs,
                ys,
                (far_grid > 0).astype(float),
                levels=[0.5],
                colors=[NORMAL_COLOUR],
                linewidths=1.0,
                linestyles=":",
            )
            handles.append(Line2D([], [], color=NORMAL_COLOUR, lw=1.0, ls=":", label="δ from the normal data"))
        blind = low & (far_grid > 0) if far_grid is not None else np.zeros_like(low)
        if blind.any():
            ax.contourf(xs, ys, blind.astype(float), levels=[0.5, 1.5], colors=[BLIND_COLOUR], alpha=0.8)
            ax.contour(xs, ys, blind.astype(float), levels=[0.5], colors=["#67000d"], linewidths=1.0)
            handles.insert(
                0,
                Patch(
                    facecolor=BLIND_COLOUR,
                    edgecolor="#67000d",
                    alpha=0.8,
                    label="blind: loss < τ_op and ≥ δ from normal data",
                ),
            )
        if normal is not None and len(normal):
            pts = np.asarray([as_floats(p) for p in normal], dtype=np.float64)
            if pts.ndim == 2 and pts.shape[1] >= 2:
                ax.scatter(pts[:, 0], pts[:, 1], s=2.5, c=NORMAL_COLOUR, linewidths=0, alpha=0.6)
                handles.append(Line2D([], [], ls="none", marker="o", ms=3, color=NORMAL_COLOUR, label="normal latents"))
        if len(witnesses):
            w = np.asarray(witnesses, dtype=np.float64)
            ax.scatter(w[:, 0], w[:, 1], s=7, marker="x", c="#1a1a1a", linewidths=0.5, alpha=0.7)
            handles.append(Line2D([], [], ls="none", marker="x", ms=4, color="#1a1a1a", label="findings (latent)"))
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        for mx, my, label in marks:
            mx, my = float(np.clip(mx, x0, x1)), float(np.clip(my, y0, y1))  # a witness beyond the map: on its edge
            ax.plot(mx, my, marker="o", ms=9, mfc="none", mec="black", mew=1.6, clip_on=False)
            inward = (6 if mx < (x0 + x1) / 2 else -6, 6 if my < (y0 + y1) / 2 else -6)  # label stays in the plot
            ax.annotate(
                label,
                (mx, my),
                xytext=inward,
                ha="left" if inward[0] > 0 else "right",
                va="bottom" if inward[1] > 0 else "top",
                textcoords="offset points",
                fontsize=9,
                weight="bold",
                color="black",
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "black", "lw": 0.6},
            )
        if marks:
            handles.append(
                Line2D(
                    [],
                    [],
                    ls="none",
                    marker="o",
                    ms=7,
                    mfc="none",
                    mec="black",
                    mew=1.4,
                    label="a region (R1 …) at its witness",
                )
            )
        ax.set_xlim(xs.min(), xs.max())
        ax.set_ylim(ys.min(), ys.max())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(
            "red: blind — the detector accepts these decodes, far from the normal data"
            if blind.any()
            else "no blind cell: every low-loss decode lies within δ of the normal data"
        )
        if handles:
            ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8)
        return data_uri(fig, "png", dpi=110)


def _latent_line(
    xs: np.ndarray,
    loss: np.ndarray,
    eps: float,
    far: np.ndarray | None,
    normal: Any,
    marks: Sequence[tuple[float, float, str]],
    xlabel: str,
) -> str:
    """The 1-D latent map: loss of the decoded point along the latent axis, the blind part (below
    ``eps`` and far) filled red, the rest below ``eps`` pale, normal latents as ticks along the bottom."""
    fig = new_figure(7.2, 3.6)
    ax = fig.add_subplot()
    ax.plot(xs, loss, color="#2c3e50", lw=1.2)
    low = np.isfinite(loss) & (loss < eps)
    blind = low & (far > 0) if far is not None else np.zeros_like(low)
    ax.fill_between(
        xs,
        0,
        1,
        where=low & ~blind,
        color=LOW_LOSS_COLOUR,
        alpha=0.12,
        transform=ax.get_xaxis_transform(),
        label=f"loss < τ_op ({eps:.3g}), near normal data",
    )
    if blind.any():
        ax.fill_between(
            xs,
            0,
            1,
            where=blind,
            color=BLIND_COLOUR,
            alpha=0.75,
            transform=ax.get_xaxis_transform(),
            label="blind: loss < τ_op and ≥ δ from normal data",
        )
    ax.axhline(eps, color=LOW_LOSS_COLOUR, lw=0.8, ls="--")
    if normal is not None and len(normal):
        pts = np.asarray([as_floats(p) for p in normal], dtype=np.float64)
        ax.plot(
            pts[:, 0],
            np.zeros(len(pts)),
            "|",
            color=NORMAL_COLOUR,
            ms=8,
            alpha=0.5,
            transform=ax.get_xaxis_transform(),
            label="normal latents",
        )
    for mx, _, label in marks:
        ax.axvline(mx, color="black", lw=1)
        ax.annotate(label, (mx, 0.95), xycoords=("data", "axes fraction"), fontsize=8, weight="bold")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss of the decoded point (log)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, fontsize=8)
    return data_uri(fig)


def to_image(flat: Any, shape: Sequence[int]) -> np.ndarray | None:
    """A sample as an ``H×W`` or ``H×W×3`` image, or ``None`` when its shape is not image-like."""
    a = as_floats(flat)
    shape = [int(s) for s in shape]
    if int(np.prod(shape)) != a.size:
        return None
    a = a.reshape(shape)
    if a.ndim == 3 and a.shape[0] in (1, 3) and min(a.shape[1:]) >= 4:
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    elif a.ndim == 3 and a.shape[-1] in (1, 3) and min(a.shape[:2]) >= 4:
        a = a[..., 0] if a.shape[-1] == 1 else a
    elif not (a.ndim == 2 and min(a.shape) >= 4):
        return None
    return a


def gallery_image(panels: Sequence[tuple[str, np.ndarray]], low: float | None, high: float | None) -> str:
    """One row of images (input, reconstruction, |difference|, nearest normal) as a PNG.
    Inputs share the domain's value range; the difference has its own scale."""
    with figure_style():
        fig = new_figure(1.45 * len(panels), 1.7)
        finite = [p for _, p in panels if np.isfinite(p).any()]
        vlo = low if low is not None else min(float(np.nanmin(p)) for p in finite)
        vhi = high if high is not None else max(float(np.nanmax(p)) for p in finite)
        for i, (title, img) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            is_diff = title.startswith("|")
            shown = img if img.ndim == 2 else np.clip((img - vlo) / max(vhi - vlo, 1e-12), 0, 1)
            if is_diff and img.ndim == 3:
                shown = img.mean(axis=-1)
            ax.imshow(
                shown,
                cmap="magma" if is_diff else "gray",
                interpolation="nearest",
                vmin=0 if is_diff else vlo,
                vmax=(float(np.nanmax(img)) or 1.0) if is_diff else vhi,
            )
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        return data_uri(fig, "png", dpi=90)


def roc_curves(curves: dict[str, dict[str, Sequence[float]]], auroc: dict[str, float] | None = None) -> str:
    """ROC curves of the compared scorers (held-out normal vs adversarial anomalies)."""
    with figure_style():
        fig = new_figure(4.6, 3.8)
        ax = fig.add_subplot()
        for name, c in curves.items():
            fpr, tpr = as_floats(c.get("fpr")), as_floats(c.get("tpr"))
            n = min(len(fpr), len(tpr))
            if n == 0:
                continue
            auc = (auroc or {}).get(name)
            label = f"{name} (AUROC {float(auc):.3f})" if auc is not None and np.isfinite(float(auc)) else name
            if c.get("against"):
                label += f" vs {c['against']}"
            ax.plot(fpr[:n], tpr[:n], lw=1.5, label=label, drawstyle="steps-post")
        ax.plot([0, 1], [0, 1], color="#aaa", ls=":", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("false-positive rate (held-out normal)")
        ax.set_ylabel("true-positive rate")
        ax.legend(loc="lower right", fontsize=8)
        return data_uri(fig)
