"""PCA reference: what the linear baseline of the user's own data does far from that data.

PCA with ``d`` components (``d`` = the model's latent size) reconstructs every point of the
plane ``x̄ + span(V_d)`` exactly (Lemma 1 and Theorem 2 of "Autoencoders for anomaly detection
are unreliable"; Appendix A.1 for the mean). Starting from a hull point projected onto that
plane and moving outward along a principal direction gives points as far from the data as
we like with PCA loss ~0. This check builds such points at 10, 10³ and 10⁶ times the scale
``s`` and records both PCA's loss and the model's loss there. It is a reference section of
the report, not a finding about the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .analytic import extreme_rows, fit_pca, flat, float64_verifier, inside, normal_flat, unflat
from .base import Probe, ProbeContext, ProbeResult, check_counts, require


@dataclass(eq=False)
class PCAReference(Probe):
    """Zero-loss far points of PCA fitted to the normal reference data.

    Args:
        pca_ratios: distances of the constructed points, in units of the scale ``s``.
        pca_directions: how many leading principal directions to walk along (both signs).
    """

    name: ClassVar[str] = "pca-reference"
    kind: ClassVar[str] = "analytic"
    supports_objective: ClassVar[bool] = False

    pca_ratios: tuple[float, ...] = (10.0, 1e3, 1e6)
    pca_directions: int = 4

    def __post_init__(self) -> None:
        self.pca_ratios = tuple(self.pca_ratios) if isinstance(self.pca_ratios, (list, tuple)) else (self.pca_ratios,)
        require(
            all(isinstance(r, (int, float)) and math.isfinite(r) and r > 0 for r in self.pca_ratios),
            self.name,
            f"pca_ratios {self.pca_ratios!r} must be finite numbers > 0",
        )
        check_counts(self, "pca_directions")

    def skip_reason(self, ctx: ProbeContext) -> str | None:
        reason = super().skip_reason(ctx)
        if reason is not None:
            return reason
        if ctx.adapter.latent_shape is None:
            return f"needs the model's latent size d: {ctx.adapter.split_reason or 'latent shape unknown'}"
        d = math.prod(ctx.adapter.latent_shape)
        if d >= ctx.adapter.n_features:
            return f"latent size {d} ≥ input size {ctx.adapter.n_features}: PCA with d components keeps everything"
        return None

    def _run(self, ctx: ProbeContext) -> ProbeResult:
        b, adapter = ctx.baseline, ctx.adapter
        d, n = math.prod(adapter.latent_shape), adapter.n_features
        ref = normal_flat(ctx)
        pca = fit_pca(ref, d, ctx.generator(salt=201))
        k = min(d, self.pca_directions)
        v = pca.components[:, :k].T
        dirs = torch.cat([v, -v])
        signs = [1] * k + [-1] * k
        hull = ref[extreme_rows(ref, dirs)]
        base = pca.mean + ((hull - pca.mean) @ pca.components) @ pca.components.T  # hull point, projected
        ratios = torch.tensor(self.pca_ratios, dtype=torch.float64)
        pts = (base[:, None, :] + (ratios[None, :, None] * b.scale) * dirs[:, None, :]).reshape(-1, n)
        pca_loss = (pca.residual_sq(pts) / n).numpy()
        if (stopped := ctx.stop.reason()) is not None:
            return ProbeResult(self.name, self.kind).stopped(stopped)
        with ctx.reporter.task("pca reference", total=1) as bar:
            model_loss, dist, _, _ = float64_verifier(ctx).measure(unflat(adapter, pts))
            bar.advance(1)
        in_domain = inside(pts, b.domain).numpy()
        held = (pca.residual_sq(flat(b.heldout.detach()).to("cpu", torch.float64)) / n).numpy()
        normal = {"min": float(held.min()), "median": float(np.median(held)), "p99": float(np.quantile(held, 0.99))}
        points = []
        for i, (j, r) in enumerate((j, r) for j in range(2 * k) for r in self.pca_ratios):
            points.append(
                {
                    "component": j % k,
                    "sign": signs[j],
                    "target_ratio": r,
                    "distance": float(dist[i]),
                    "distance_ratio": float(dist[i] / b.scale),
                    "pca_loss": float(pca_loss[i]),
                    "model_loss": float(model_loss[i]),
                    "model_loss_ratio": float(model_loss[i] / b.tau_op),
                    "inside_domain": bool(in_domain[i]),
                }
            )
        worst = float(pca_loss.max())
        note = (
            f"PCA with d={d} components reconstructs points up to {max(self.pca_ratios):g}·s from the normal data "
            f"with loss ≤ {worst:.3g} (its own smallest normal loss: {normal['min']:.3g})"
        )
        if b.domain.bounded and not in_domain.all():
            note += f"; {int((~in_domain).sum())} of {len(in_domain)} points lie outside the domain {b.domain.reason}"
        artifacts = {
            "d": d,
            "explained_variance_ratio": float(pca.explained_variance_ratio.sum()),
            "pca_loss_normal": normal,
            "max_pca_loss": worst,
            "model_loss_min_at_points": float(model_loss.min()),
            "points": points,
            "note": note,
        }
        return ProbeResult(self.name, self.kind, reason=note, evaluations=len(pts), artifacts=artifacts)
