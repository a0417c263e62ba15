"""Affine check: exact blind subspaces of linear autoencoders (with or without biases).

A linear autoencoder, however many layers, computes ``f(x) = A x + b``. Its residual is
``r(x) = (I − A) x − b`` (divided per feature by the model's standardisation, if any), so along
``p + t·v`` the residual changes by ``t·(I − A) v``: where ``A v = v`` the loss does not grow at
all (Lemma 3 of "Autoencoders for anomaly detection are unreliable"), and where ``A v = λ v``
with ``λ`` near 1 it grows like ``((1 − λ) t)² / n``. With biases, a zero-loss line exists when
the offset can be absorbed — at the optimum ``b_dec = x̄`` (Appendix A.1).

The check decides affinity numerically, extracts ``A`` and ``b``, takes the singular value
decomposition of the residual map, and for every direction whose residual grows slowly enough
builds points outward from a hull point (Theorem 2), computes in closed form how far the loss
stays below ``τ_min`` and ``τ_op`` (the *extrapolated* reach), and re-measures those points and a
loss-vs-distance series in float64 (the *measured* reach: the farthest verified point below τ_op).
A direction is called *unbounded* only when its residual slope is zero to the float64 precision of
the measurement (``unbounded_tolerance``), so that no finite reach can be told from the numbers;
a slope of a few float32 ulps is a finite reach, however far. The result is one ``certificate``
finding for the blind subspace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.linalg
import torch

from ..findings import measured_finding
from ..verdict import SEVERITY_RANK
from .analytic import (
    CERTIFY_FROM_RATIO,
    EXAMPLE_RATIO,
    affinity_test,
    box_exit,
    extreme_rows,
    feature_scale,
    fit_pca,
    flat,
    float64_verifier,
    growth_exponent,
    inside,
    normal_flat,
    quadratic_reach,
    ratio_grid,
    round_list,
    slope_tolerance,
    start_shift_limit,
    unflat,
)
from .base import Probe, ProbeContext, ProbeResult, check_counts


@dataclass(eq=False)
class AffineCheck(Probe):
    """Certificate of the blind subspace of an affine (linear) autoencoder.

    Args:
        max_features: largest input size for which the dense ``n × n`` Jacobian is extracted.
        affine_trials: random triples in the affinity test.
        max_directions: most slowly growing directions analysed and verified.
        per_decade: points per decade of the loss-vs-distance series (0.1·s … 10⁶·s).
    """

    name: ClassVar[str] = "affine"
    kind: ClassVar[str] = "analytic"
    supports_objective: ClassVar[bool] = False

    max_features: int = 2048
    affine_trials: int = 16
    max_directions: int = 16
    per_decade: int = 4

    def __post_init__(self) -> None:
        check_counts(self, "max_features", "affine_trials", "max_directions", "per_decade")

    def _run(self, ctx: ProbeContext) -> ProbeResult:
        b, n = ctx.baseline, ctx.adapter.n_features
        if n > self.max_features:
            return ProbeResult(
                self.name,
                self.kind,
                status="skipped",
                reason=(f"{n} input features > max_features {self.max_features}: dense Jacobian too large"),
            )
        verifier = float64_verifier(ctx)
        model = verifier.adapter
        ref = normal_flat(ctx)
        affine, dev, tol, evals = affinity_test(model, ref, b.scale, ctx.generator(salt=301), self.affine_trials)
        artifacts = {"affine": affine, "max_relative_deviation": dev, "tolerance": tol}
        if not affine:
            return ProbeResult(
                self.name,
                self.kind,
                evaluations=evals,
                artifacts=artifacts,
                reason=f"not affine (relative deviation {dev:.2g} > {tol:.1g}); see far-field",
            )
        if (stopped := ctx.stop.reason()) is not None:
            return ProbeResult(self.name, self.kind, evaluations=evals, artifacts=artifacts).stopped(stopped)
        with ctx.reporter.task("affine check", total=3) as bar:
            A, bias = self._extract(model, ref.mean(dim=0), b.scale)
            evals += n + 1
            bar.advance(1)
            finding, summary, measured = self._analyse(ctx, verifier, ref, A, bias)
            evals += measured
            bar.advance(2)
        artifacts.update(summary)
        reason = summary.pop("reason", "")
        return ProbeResult(
            self.name,
            self.kind,
            findings=[finding] if finding else [],
            evaluations=evals,
            artifacts=artifacts,
            reason=reason,
        )

    @staticmethod
    def _extract(model, centre: torch.Tensor, step: float) -> tuple[np.ndarray, np.ndarray]:
        """``A`` and ``b`` of ``f(x) = A x + b`` (data space), from ``n + 1`` batched evaluations
        around the data's centre (steps of size ``s`` keep the differences well above rounding)."""
        n = centre.numel()
        pts = torch.cat([centre[None], centre[None] + step * torch.eye(n, dtype=torch.float64)])
        with torch.no_grad():
            out = flat(model.batched(model.reconstruct, unflat(model, pts.to(model.dtype)))).to("cpu", torch.float64)
        A = ((out[1:] - out[:1]) / step).T.numpy()
        return A, out[0].numpy() - A @ centre.numpy()

    def _analyse(self, ctx: ProbeContext, verifier, ref: torch.Tensor, A: np.ndarray, bias: np.ndarray):
        """Closed-form blind rays of ``f(x) = A x + bias``, re-measured in float64.
        Returns ``(finding or None, summary for the artifacts, points measured)``."""
        b, adapter = ctx.baseline, ctx.adapter
        n = A.shape[0]
        D = feature_scale(verifier.adapter, n).numpy()
        gain = max(float(np.linalg.norm(A, 2)), float(np.linalg.norm(ref.mean(dim=0).numpy())) / b.scale)
        tol_unb = slope_tolerance(n, verifier.dtype, gain)
        eig = np.linalg.eigvals(A)
        rays = _closed_form(b, adapter, ref.numpy(), (np.eye(n) - A) / D[:, None], -bias / D)
        summary: dict = {"residual_slopes_smallest": round_list(rays["S"][::-1][:16]), "unbounded_tolerance": tol_unb}
        blind = rays["blind"]
        if len(blind) == 0:
            summary["reason"] = "affine; no direction keeps the loss ≤ τ_op out to δ (offset or growth)"
            summary["eigenvalues_near_1"] = _near_one(eig, 3)
            return None, summary, 0
        summary.update(
            {
                "blind_dimension": len(blind),
                "eigenvalues_near_1": _near_one(eig, len(blind)),
                "principal_angles_to_pca_deg": self._angles(ctx, ref, D, rays["V"][blind].numpy().T),
                "pca_components": _pca_size(adapter, len(blind)),
                "offset_condition": bool(adapter.loss_from_sq(rays["floor"][blind].min()) <= b.tau_min),
            }
        )
        shown = blind[: self.max_directions]
        loss, dist, nn_idx, rec, pts, rows, ts, tags = self._measure(b, adapter, verifier, rays, shown, tol_unb)
        directions, best = [], None
        for i in shown:
            info, example = _direction_summary(b, adapter, rays, i, tol_unb, rows == i, ts, tags, loss, dist)
            directions.append(info)
            if example is not None:
                key = (not info["unbounded"], -info["blind_distance"], info["residual_slope"])
                if best is None or key < best[0]:
                    best = (key, info, example)
        summary["directions"] = directions
        summary["unbounded_dimension"] = sum(d["unbounded"] for d in directions)
        if best is None:
            summary["reason"] = f"affine; blind subspace of dimension {len(blind)} but no verified point reached δ"
            return None, summary, len(pts)
        _, primary, (j, sev) = best
        details = {
            key: summary[key]
            for key in (
                "blind_dimension",
                "unbounded_dimension",
                "eigenvalues_near_1",
                "principal_angles_to_pca_deg",
                "pca_components",
                "offset_condition",
            )
        }
        details.update({key: val for key, val in primary.items() if key != "example"})
        if b.domain.bounded:
            details["domain"] = f"bounded {b.domain.reason}: rays end at the box edge, no unbounded claim"
        x = pts[j].reshape(adapter.input_shape).numpy()
        finding = measured_finding(
            verifier,
            kind="certificate",
            probe=self.name,
            severity=sev,
            loss=loss[j],
            distance=dist[j],
            nearest=nn_idx[j],
            x=x,
            reconstruction=rec[j],
            details=details,
        )
        reach = (
            "unbounded (slope zero to float64 precision)"
            if primary["unbounded"]
            else f"verified out to {primary['blind_distance_ratio']:.3g}·s" + _extrapolated(primary)
        )
        summary["reason"] = f"affine; blind subspace of dimension {len(blind)}, {reach}"
        return finding, summary, len(pts)

    def _measure(self, b, adapter, verifier, rays: dict, shown: np.ndarray, tol_unb: float):
        """One float64 batch: the loss-vs-distance series of every shown ray and its example
        points (10³·s out when the slope is zero to precision, else just inside the τ_min and
        τ_op reaches). Returns the measurements and, per point, its ray, ``t`` and tag."""
        grid0 = ratio_grid(self.per_decade, 0.1, 1e6) * b.scale
        rows, ts, tags = [], [], []
        for i in shown:
            edge = rays["t_edge"][i]
            grid = np.append(grid0[grid0 < edge], edge) if np.isfinite(edge) else grid0
            if rays["sigma"][i] <= tol_unb and not b.domain.bounded:
                extra = [EXAMPLE_RATIO * b.scale]  # the closed-form reach would only measure rounding
            else:
                extra = [_approach(rays["t_min"][i], edge), _approach(rays["t_op"][i], edge)]
            extra = [t for t in extra if np.isfinite(t) and t > 0]
            rows += [i] * (len(grid) + len(extra))
            ts += list(grid) + extra
            tags += ["series"] * len(grid) + ["example"] * len(extra)
        rows_a, ts_a, tags_a = np.array(rows), np.array(ts), np.array(tags)
        pts = torch.from_numpy(rays["base"][rows_a] + ts_a[:, None] * rays["V"].numpy()[rows_a])
        loss, dist, nn_idx, rec = verifier.measure(unflat(adapter, pts))
        return loss, dist, nn_idx, rec, pts, rows_a, ts_a, tags_a

    @staticmethod
    def _angles(ctx: ProbeContext, ref: torch.Tensor, D: np.ndarray, VB: np.ndarray) -> list[float]:
        """Principal angles (degrees) between the blind subspace and the PCA subspace of the
        reference data, both in the model's input space (Baldi & Hornik: a converged linear
        autoencoder spans the leading principal subspace)."""
        pca = fit_pca(ref / torch.from_numpy(D), _pca_size(ctx.adapter, VB.shape[1]), ctx.generator(salt=302))
        q, _ = np.linalg.qr(VB / D[:, None])
        angles = np.degrees(scipy.linalg.subspace_angles(q, pca.components.numpy()))
        return round_list(np.sort(angles))


def _pca_size(adapter, blind_dimension: int) -> int:
    """PCA components compared with the blind subspace: the latent size when known."""
    return math.prod(adapter.latent_shape) if adapter.latent_shape is not None else blind_dimension


def _closed_form(b, adapter, ref: np.ndarray, R: np.ndarray, r0: np.ndarray) -> dict:
    """Blind rays of the residual map ``r(x) = R x + r0`` in closed form.

    Every right singular vector ``v`` of ``R`` (slope ``σ``) gives two rays ``p' ± t v``: ``p``
    is the data point farthest along the ray (a hull vertex, so every point of the ray beyond
    it is at least ``t`` from all the data), ``p'`` is ``p`` moved onto the low-loss set along
    the other directions. Along the ray ``||r||² = ||r'||² ± 2tσ(r'·u) + t²σ²``, which gives
    the distances up to which the loss stays below ``τ_op`` and ``τ_min``. Rays whose ``τ_op``
    reach (or box edge) is beyond δ are *blind*, best first, one sign per direction.
    """
    U, S, Vt = np.linalg.svd(R)
    q_op, q_min = adapter.sq_threshold(b.tau_op), adapter.sq_threshold(b.tau_min)
    # necessary for reaching δ below τ_op: t ≤ (|r'·u| + sqrt(q)) / σ ≤ 2 sqrt(q) / σ
    slow = np.flatnonzero(S * b.min_distance <= 2 * math.sqrt(q_op))
    k = len(slow)
    sig = np.concatenate([S[slow], S[slow]])
    V = np.concatenate([Vt[slow], -Vt[slow]])
    Ul = np.concatenate([U[:, slow].T, -U[:, slow].T])  # R(±v) = ±σ u
    p = ref[extreme_rows(torch.from_numpy(ref), torch.from_numpy(V)).numpy()]
    # least-squares step toward the low-loss set (Theorem 2's projection) along every singular
    # direction but the ray's own, where that moves p by at most the data's radius; orthogonal
    # to the ray, so p' keeps p's extreme position along it
    coef = ((p @ R.T + r0) @ U) / np.where(S > 0, S, np.inf)
    use = np.abs(coef) <= start_shift_limit(b, torch.from_numpy(ref))
    use[np.arange(2 * k), np.concatenate([slow, slow])] = False
    base = p - (coef * use) @ Vt
    base = np.where(inside(torch.from_numpy(base), b.domain).numpy()[:, None], base, p)
    rb = base @ R.T + r0
    floor = (rb * rb).sum(axis=1)
    lin = 2 * sig * (rb * Ul).sum(axis=1)
    t_op, t_min = (quadratic_reach(sig**2, lin, floor - q) for q in (q_op, q_min))
    V_t = torch.from_numpy(V)
    t_edge = box_exit(torch.from_numpy(base), V_t, b.domain).numpy()
    reach = np.fmin(np.nan_to_num(t_op, nan=-1.0), t_edge)
    pick = np.where(reach[k:] > reach[:k], np.arange(k) + k, np.arange(k))  # the better sign per direction
    blind = pick[reach[pick] >= b.min_distance]
    blind = blind[np.lexsort((sig[blind], -reach[blind]))]
    return {
        "S": S,
        "sigma": sig,
        "V": V_t,
        "base": base,
        "floor": floor,
        "t_op": t_op,
        "t_min": t_min,
        "t_edge": t_edge,
        "blind": blind,
    }


def _direction_summary(
    b,
    adapter,
    rays: dict,
    i: int,
    tol_unb: float,
    sel: np.ndarray,
    ts: np.ndarray,
    tags: np.ndarray,
    loss: np.ndarray,
    dist: np.ndarray,
) -> tuple[dict, tuple | None]:
    """What one blind ray's measurements show; with ``(index, severity)`` of its best example point."""
    series = sel & (tags == "series")
    far = series & (ts >= CERTIFY_FROM_RATIO * b.scale)
    unbounded = bool(
        rays["sigma"][i] <= tol_unb and not b.domain.bounded and far.any() and (loss[far] <= b.tau_op).all()
    )
    low = sel & (loss <= b.tau_op)
    t_op = math.inf if unbounded else _finite(rays["t_op"][i])
    t_min = math.inf if unbounded else _finite(rays["t_min"][i])
    blind = float(dist[low].max()) if low.any() else 0.0
    info = {
        "unbounded": unbounded,
        "unbounded_basis": (
            f"residual slope {rays['sigma'][i]:.3g} ≤ float64 measurement tolerance {tol_unb:.3g}" if unbounded else ""
        ),
        "within_tau_min": bool(unbounded and (loss[far] <= b.tau_min).all()),
        "residual_slope": float(rays["sigma"][i]),
        "offset_loss": float(adapter.loss_from_sq(rays["floor"][i])),
        "blind_distance": blind,
        "blind_distance_ratio": blind / b.scale,
        "blind_distance_tau_op": t_op,
        "blind_distance_tau_op_ratio": t_op / b.scale if t_op is not None else None,
        "blind_distance_tau_min": t_min,
        "blind_distance_tau_min_ratio": t_min / b.scale if t_min is not None else None,
        "box_exit": float(rays["t_edge"][i]) if np.isfinite(rays["t_edge"][i]) else None,
        "growth_exponent": None if b.domain.bounded else growth_exponent(ts[series], loss[series], b.tau_op),
        "series": {"t": round_list(ts[series]), "distance": round_list(dist[series]), "loss": round_list(loss[series])},
    }
    graded = [(b.severity(float(loss[j]), float(dist[j])), j) for j in np.flatnonzero(sel & (tags == "example"))]
    graded = [(sev, j) for sev, j in graded if sev is not None]
    if not graded:
        return info, None
    sev, j = min(graded, key=lambda g: (SEVERITY_RANK[g[0]], -dist[g[1]], loss[g[1]]))
    info["example"] = {"loss": float(loss[j]), "distance_ratio": float(dist[j] / b.scale), "severity": sev}
    return info, (j, sev)


def _approach(t: float, edge: float) -> float:
    """A verification point just inside the closed-form reach ``t``, or the box edge when nearer."""
    if np.isnan(t) or t <= 0:
        return math.nan
    return float(edge) if t > edge else 0.95 * float(t)


def _finite(t: float) -> float | None:
    return None if np.isnan(t) else float(t)


def _extrapolated(info: dict) -> str:
    """The closed-form reach below τ_op, when it lies beyond what was measured."""
    ratio = info.get("blind_distance_tau_op_ratio")
    if ratio is None or ratio <= info.get("blind_distance_ratio", 0.0):
        return ""
    return f" (extrapolated from the slope: {ratio:.3g}·s)" if math.isfinite(ratio) else ""


def _near_one(eig: np.ndarray, k: int) -> list:
    """The ``k`` eigenvalues of ``A`` closest to 1: floats, or ``[re, im]`` pairs when complex."""
    top = eig[np.argsort(np.abs(eig - 1))[: max(1, k)]]
    return [float(e.real) if abs(e.imag) <= 1e-12 * max(1.0, abs(e)) else [float(e.real), float(e.imag)] for e in top]
