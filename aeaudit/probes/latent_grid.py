"""Latent grid: the Figure 2 procedure of "Autoencoders for anomaly detection are unreliable".

Every point ``z`` of a grid over the latent box is decoded, ``a = h(z)`` (projected onto the
input domain), and scored on its *own* reconstruction, ``L_R(a) = mean (a − f(a))²``; a point
whose decode scores low and lies far from every normal sample is a candidate blind spot.

* ``d ≤ 2``: a full grid, ``resolution`` points per axis; it is also the report's loss map.
* ``d = 3``: a coarser full grid (``resolution_3d`` per axis).
* ``d > 3``: a full grid is out of reach, so a scrambled Sobol sample of the box (seeded).
* ``d ≥ 3``: for the map, a 2-D slice through the normal latents' mean along their two main
  principal directions, evaluated first.

Grid points run coarse to fine, so a scan stopped early leaves an evenly thinned map, not half of one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from scipy.stats import qmc

from ..findings import PREFILTER_DISTANCE_SLACK, Candidates, loose_threshold
from .base import Probe, ProbeContext, ProbeResult, check_counts, check_positive
from .latent_space import decode_flat, latent_box, widen

MAP_DIGITS = 4  # significant digits of the map's numbers in report.json


def coarse_to_fine(resolution: int, dims: int) -> np.ndarray:
    """Flat (C-order) indices of a ``resolution^dims`` grid, the every-2^k-th lines before finer ones."""
    i = np.arange(resolution)
    level = np.where(i == 0, 64, np.log2(np.maximum(i & -i, 1)).astype(int))  # trailing zero bits of i
    per_point = np.stack(np.meshgrid(*([level] * dims), indexing="ij"), axis=-1).reshape(-1, dims).min(axis=1)
    return np.argsort(-per_point, kind="stable")


def rounded(a: np.ndarray) -> list:
    """Nested lists with ``MAP_DIGITS`` significant digits; ``None`` where a value is missing."""
    a = np.asarray(a, dtype=float)
    if a.ndim > 1:
        return [rounded(row) for row in a]
    return [float(f"{v:.{MAP_DIGITS}g}") if np.isfinite(v) else None for v in a.tolist()]


@dataclass(eq=False)
class LatentGrid(Probe):
    """Decode a grid over the widened latent box; score each decode on its own reconstruction.

    Args:
        latent_extent: widening of the normal latents' range (3 = three times as wide).
        resolution: points per axis of the full grid for a 1-D or 2-D latent (and of its map).
        resolution_3d: points per axis of the full grid for a 3-D latent.
        samples: Sobol points for a latent of more than 3 dimensions (rounded up to a power of 2).
        slice_resolution: points per axis of the principal-direction slice (``d ≥ 3``).
        batch_size: points decoded and scored per batch.
        map_normals: normal latents drawn on the map (a seeded subsample).
    """

    name: ClassVar[str] = "grid"
    kind: ClassVar[str] = "search"
    needs_latent: ClassVar[bool] = True
    effort_presets: ClassVar[dict] = {
        "quick": {"resolution": 100, "resolution_3d": 24, "samples": 4096},
        "thorough": {"resolution": 400, "resolution_3d": 64, "samples": 65536},
    }

    latent_extent: float = 3.0
    resolution: int = 200
    resolution_3d: int = 40
    samples: int = 16384
    slice_resolution: int = 100
    batch_size: int = 1024
    map_normals: int = 2000

    def __post_init__(self) -> None:
        check_counts(self, "resolution", "resolution_3d", "samples", "slice_resolution", minimum=2)
        check_counts(self, "batch_size", "map_normals")
        check_positive(self, "latent_extent")

    def _plane(
        self, z: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The map's plane ``z = origin + (u, v) · basis``: ``(origin, basis [k, d], u axis, v axis)``.

        ``d ≤ 2``: the latent box itself (identity basis; ``v`` is a single 0 for ``d = 1``);
        otherwise the slice through the mean along the two main principal directions, as wide as
        the normal latents' projections widened ``latent_extent``×."""
        d = z.shape[1]
        if d <= 2:
            axes = [np.linspace(lo[k], hi[k], self.resolution) for k in range(d)]
            return np.zeros(d), np.eye(d), axes[0], axes[1] if d == 2 else np.zeros(1)
        origin = z.mean(axis=0)
        basis = np.linalg.svd(z - origin, full_matrices=False)[2][:2]
        proj = (z - origin) @ basis.T
        plo, phi = widen(proj.min(axis=0), proj.max(axis=0), self.latent_extent)
        return (
            origin,
            basis,
            np.linspace(plo[0], phi[0], self.slice_resolution),
            np.linspace(plo[1], phi[1], self.slice_resolution),
        )

    def _search_points(self, ctx: ProbeContext, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Points beyond the map for ``d ≥ 3``: a coarser full grid (``d = 3``) or a Sobol sample."""
        if lo.size == 3:
            axes = [np.linspace(lo[k], hi[k], self.resolution_3d) for k in range(3)]
            grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
            return grid[coarse_to_fine(self.resolution_3d, 3)]
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator(salt=211)))
        sobol = qmc.Sobol(lo.size, scramble=True, seed=seed).random_base2(int(np.ceil(np.log2(max(self.samples, 2)))))
        return qmc.scale(sobol, lo, hi)

    def _loss_map(
        self,
        ctx: ProbeContext,
        z_normal: np.ndarray,
        origin: np.ndarray,
        basis: np.ndarray,
        u_axis: np.ndarray,
        v_axis: np.ndarray,
        order: np.ndarray,
        losses: np.ndarray,
        far: np.ndarray,
        marks: np.ndarray,
    ) -> dict:
        """The report's Figure-2-style map (``losses``/``far`` arrive in evaluation ``order``)."""
        shape = (v_axis.size, u_axis.size)
        grid_losses, grid_far = np.full(losses.size, np.nan), np.zeros(losses.size, dtype=bool)
        grid_losses[order], grid_far[order] = losses, far
        pick = np.sort(torch.randperm(z_normal.shape[0], generator=ctx.generator(salt=223))[: self.map_normals].numpy())
        normal_uv = (z_normal[pick] - origin) @ basis.T
        d = z_normal.shape[1]
        return {
            "kind": {1: "line", 2: "grid"}.get(d, "slice"),
            "axis_names": {1: ["z1", ""], 2: ["z1", "z2"]}.get(d, ["PC1", "PC2"]),
            "u": rounded(u_axis),
            "v": rounded(v_axis),
            "losses": rounded(grid_losses.reshape(shape)),  # losses[i][j] at (u[j], v[i])
            "far": grid_far.reshape(shape).astype(int).tolist(),  # 1 where the decode is at least ~δ from normal data
            "objective": ctx.objective.name,
            "contour": ctx.objective.tau_op,
            "tau_min": ctx.objective.tau_min,
            "normal": rounded(np.pad(normal_uv, ((0, 0), (0, 2 - normal_uv.shape[1])))),
            "findings": rounded(marks[: self.map_normals]),
            "origin": rounded(origin),
            "basis": rounded(basis),
        }

    def _run(self, ctx: ProbeContext) -> ProbeResult:
        adapter, b, obj = ctx.adapter, ctx.baseline, ctx.objective
        z_normal_t, zlo, zhi = latent_box(ctx, self.latent_extent)
        z_normal, lo, hi = (t.double().cpu().numpy() for t in (z_normal_t, zlo, zhi))
        d = lo.size
        origin, basis, u_axis, v_axis = self._plane(z_normal, lo, hi)
        map_order = coarse_to_fine(u_axis.size, 2) if v_axis.size > 1 else np.arange(u_axis.size)
        vv, uu = np.meshgrid(v_axis, u_axis, indexing="ij")  # row = v, column = u
        map_uv = np.stack([uu.ravel(), vv.ravel()], axis=1)[map_order]
        points = origin + map_uv[:, : basis.shape[0]] @ basis
        if d > 2:
            points = np.concatenate([points, self._search_points(ctx, lo, hi)])

        keep_score, keep_dist = loose_threshold(obj.tau_op), b.candidate_distance * PREFILTER_DISTANCE_SLACK
        n_map = map_uv.shape[0]
        losses, dists = np.full(points.shape[0], np.nan), np.full(points.shape[0], np.nan)
        kept_x, kept_z, kept_rows, stopped, done = [], [], [], None, 0
        with ctx.reporter.task("latent grid", total=points.shape[0]) as bar:
            for start in range(0, points.shape[0], self.batch_size):
                if (stopped := ctx.stop.reason()) is not None:
                    break
                z = torch.as_tensor(points[start : start + self.batch_size]).to(adapter.device, adapter.dtype)
                with torch.no_grad():
                    a = decode_flat(ctx, z)
                score = obj.evaluate(a)
                with torch.no_grad():
                    dist = b.neighbours.query(a)[0]
                rows = slice(start, start + z.shape[0])
                losses[rows] = score.double().cpu().numpy()
                dists[rows] = dist.double().cpu().numpy()
                keep = ((score <= keep_score) & (dist >= keep_dist)) | ~torch.isfinite(score)  # NaN: its own finding
                if keep.any():
                    kept_x.append(a[keep].cpu())
                    kept_z.append(z[keep].cpu())
                    kept_rows.append(start + torch.nonzero(keep).flatten().cpu().numpy())
                done += z.shape[0]
                bar.advance(z.shape[0])
        rows_all = np.concatenate(kept_rows) if kept_rows else np.empty(0, dtype=int)
        cands = Candidates(
            x=torch.cat(kept_x) if kept_x else torch.empty(0, *b.reference.shape[1:]),
            probe=self.name,
            latent=torch.cat(kept_z) if kept_z else torch.empty(0, d),
        )
        loss_map = self._loss_map(
            ctx,
            z_normal,
            origin,
            basis,
            u_axis,
            v_axis,
            map_order,
            losses[:n_map],
            dists[:n_map] >= b.min_distance * PREFILTER_DISTANCE_SLACK,
            map_uv[rows_all[rows_all < n_map]],
        )
        artifacts = {
            "loss_map": loss_map,
            "latent_dim": d,
            "points": int(points.shape[0]),
            "evaluated": done,
            "low_and_far": int(rows_all.size),
            "box_low": rounded(lo),
            "box_high": rounded(hi),
            "design": ("full grid" if d <= 3 else f"Sobol sample of {points.shape[0] - n_map} points")
            + ("" if d <= 2 else " + principal-direction slice for the map"),
        }
        note = _below_tau_min(losses[:done], dists[:done], obj.tau_min, b.scale)
        result = ProbeResult(self.name, self.kind, candidates=cands, evaluations=done, artifacts=artifacts)
        if stopped:
            return result.stopped(f"{stopped}; {note}")
        result.reason = note
        return result


def _below_tau_min(losses: np.ndarray, dists: np.ndarray, tau_min: float, scale: float) -> str:
    """The paper's Figure 2 observation in one line: how many decodes score below every normal
    sample and how far the farthest of them lies (screening precision; findings are verified apart)."""
    low = losses <= tau_min
    if not low.any():
        return f"no decode scores below τ_min in {losses.size:,} points"
    return (
        f"{int(low.sum()):,} of {losses.size:,} decodes score below τ_min (lower than every normal sample), "
        f"the farthest {dists[low].max() / scale:.2f}·s from the normal data"
    )
