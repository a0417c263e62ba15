"""Far-field check: blind rays of piecewise-linear networks (ReLU, LeakyReLU, max-pooling …).

Far enough out along a ray ``x0 + t·u`` no unit of a piecewise-linear network switches any
more, so the network is affine there, ``f(x) = A_u x + c_u`` (§4.4.1 of "Autoencoders for
anomaly detection are unreliable"). The residual then grows like ``t·||(A_u − I) u||``: the loss
grows like ``t²`` on an ordinary ray and stays bounded on a ray where ``A_u u = u``.

The check shoots rays in random directions, the data's principal directions and directions
found by minimising ``||(A_u − I) u||`` over the unit sphere. Each starts from the data mean,
shifted along the ray to the level of the data point farthest along it (in a bounded domain:
at the mean), and is measured at distances ``0.1·s … 10⁶·s`` in one float64 batch. It detects where each ray's
reconstruction becomes affine (consecutive points collinear), fits the growth exponent of the
loss over the last two decades, and reports each ray's *measured* reach (the farthest checked
point with loss ≤ ``τ_op``) and its *extrapolated* reach (where the far-field affine residual
``r(t) = r_last + (t − t_last)·g`` would cross ``τ_op``). A ray is called *unbounded blind* only when
its reconstruction is affine over the last two decades, its residual slope ``||g||`` is zero to the
float64 precision of the measurement, and its loss stays ≤ ``τ_op`` at every checked point from
``10·s`` on. Networks with smooth activations get the same measurements as evidence, without a
certificate; their low-loss points go to the audit as ordinary candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..findings import Candidates, Finding, measured_finding
from ..model.inventory import SMOOTH_ACTIVATIONS
from .analytic import (
    CERTIFY_FROM_RATIO,
    EXAMPLE_RATIO,
    affinity_test,
    box_exit,
    dtype_eps,
    feature_scale,
    fit_pca,
    flat,
    float64_verifier,
    growth_exponent,
    model_residual,
    normal_flat,
    quadratic_reach,
    ratio_grid,
    round_list,
    slope_tolerance,
    start_shift_limit,
    unflat,
)
from .base import Probe, ProbeContext, ProbeResult, check_counts, check_positive

SPHERE_RATIO = 1e4  # the sphere objective is measured 10⁴·s out, beyond where units still switch
STABLE_DECADES = 2.0  # a ray is in its far field when its last two decades are affine
DUPLICATE_COSINE = 0.999
REFINE_ROUNDS = 3
RAY_CHUNK_ELEMENTS = 1 << 25  # floats of reconstructions held at once while checking rays


def smooth_ops(card) -> list[str]:
    """Smooth operations the model card found in the module tree or traced graph."""
    return sorted((set(card.layers) | set(card.activations)) & SMOOTH_ACTIVATIONS)


@dataclass(eq=False)
class FarField(Probe):
    """Far-field rays of piecewise-linear networks; growth evidence for smooth ones.

    Args:
        random_rays: random directions (toward random box corners in a bounded domain).
        pca_rays: leading principal directions of the data, each walked in both signs.
        optimised_rays: directions kept from the sphere optimisation (unbounded domains).
        sphere_starts, sphere_steps, sphere_lr: the batched Adam minimisation of ``||(A_u − I) u||``.
        per_decade: checked distances per decade.
        max_ratio: farthest checked distance, in units of ``s``.
        affine_trials: random triples of the affinity test (an affine model is left to ``affine``).
        max_certificates: most certificate findings (distinct directions) reported.
        max_features: largest input size for which optimised directions are refined with the
            exact ``n × n`` local Jacobian in float64.
    """

    name: ClassVar[str] = "far-field"
    kind: ClassVar[str] = "analytic"
    supports_objective: ClassVar[bool] = False
    needs_gradients: ClassVar[bool] = True  # the sphere optimisation and the refinement differentiate the model
    effort_presets: ClassVar[dict] = {
        "quick": {"random_rays": 16, "sphere_starts": 32, "sphere_steps": 100},
        "thorough": {"random_rays": 64, "sphere_starts": 128, "sphere_steps": 300, "optimised_rays": 16},
    }

    random_rays: int = 32
    pca_rays: int = 4
    optimised_rays: int = 8
    sphere_starts: int = 64
    sphere_steps: int = 150
    sphere_lr: float = 0.05
    per_decade: int = 4
    max_ratio: float = 1e6
    affine_trials: int = 16
    max_certificates: int = 8
    max_features: int = 2048

    def __post_init__(self) -> None:
        check_counts(self, "random_rays", "pca_rays", "optimised_rays", "sphere_starts", "sphere_steps", minimum=0)
        check_counts(self, "per_decade", "affine_trials", "max_certificates", "max_features")
        check_positive(self, "sphere_lr")
        check_positive(self, "max_ratio")

    def _run(self, ctx: ProbeContext) -> ProbeResult:
        b, adapter = ctx.baseline, ctx.adapter
        verifier = float64_verifier(ctx)
        ref = normal_flat(ctx)
        affine, _, _, evals = affinity_test(verifier.adapter, ref, b.scale, ctx.generator(salt=401), self.affine_trials)
        if affine:
            return ProbeResult(
                self.name,
                self.kind,
                status="skipped",
                evaluations=evals,
                reason="the model is affine: the affine check analyses it exactly",
            )
        smooth = smooth_ops(adapter.card)
        x0 = ref.mean(dim=0)
        with ctx.reporter.task("far-field rays", total=self.sphere_steps + 1) as bar:
            dirs, shifts, sources, objective, opt_evals, stopped = self._directions(ctx, ref, x0, bar)
            # unbounded domain: start each ray from the mean (shifted orthogonally for optimised rays),
            # level with the data point farthest along it, so every point of the ray is at least t
            # from all the data; in a box, at the mean
            level = ((ref - x0) @ dirs.T).amax(dim=0)
            origins = x0 + shifts + (0.0 if b.domain.bounded else level[:, None]) * dirs
            rays = self._measure(ctx, verifier, origins, dirs)
            bar.advance(1)
        stopped = stopped or rays["stopped"]
        evals += opt_evals + rays["evaluations"]
        summaries = self._summarise(ctx, rays, sources, objective, certifiable=not smooth)
        findings = [] if smooth else self._certificates(ctx, rays, summaries, dirs, origins)
        # measured points go to the audit as candidates: low and far ones of a smooth network (no
        # certificate applies there), and every point whose loss came out NaN or inf
        pick = rays["measured"] & ~np.isfinite(rays["loss"])
        if smooth:
            pick |= (rays["loss"] <= b.tau_op) & (rays["dist"] >= b.candidate_distance)
        candidates = Candidates(x=unflat(adapter, self._points(origins, dirs, rays, pick)), probe=self.name)
        exps = [r["growth_exponent"] for r in summaries if r["growth_exponent"] is not None]
        med = f"median growth exponent {np.median(exps):.2f}" if exps else "no growth exponent (bounded domain)"
        if smooth:
            reason = (
                f"smooth activations ({', '.join(smooth)}): no far-field certificate applies; "
                f"{len(summaries)} rays, {med} (evidence only)"
            )
        else:
            n_unb = sum(r["unbounded"] for r in summaries)
            n_far = sum(r["blind_distance"] >= b.min_distance for r in summaries)
            reason = f"{len(summaries)} rays: {n_unb} unbounded blind, {n_far} blind beyond δ; {med}"
        notes = []
        if adapter.card.unknown_ops and not smooth:
            notes.append(
                f"operations aeaudit does not classify ({', '.join(adapter.card.unknown_ops)}): "
                "certificates rest on the measured affinity along each ray"
            )
        if b.domain.bounded:
            notes.append(
                f"bounded domain {b.domain.reason}: rays stop at the box edge, so no ray can be unbounded "
                "and no far field is reached; losses are reported up to the edge"
            )
        if stopped:
            notes.append(f"cut short ({stopped}): some directions were not refined or measured")
        artifacts = {
            "certificates_apply": not smooth,
            "smooth_ops": smooth,
            "domain_bounded": b.domain.bounded,
            "notes": notes,
            "ratios": round_list(rays["ratios"]),
            "summary": _source_summary(summaries),
            "rays": summaries,
        }
        result = ProbeResult(
            self.name,
            self.kind,
            reason="; ".join([reason, *notes]),
            findings=findings,
            candidates=candidates,
            evaluations=evals,
            artifacts=artifacts,
        )
        return result.stopped(stopped) if stopped else result

    # ------------------------------------------------------------------ directions
    def _directions(self, ctx: ProbeContext, ref: torch.Tensor, x0: torch.Tensor, bar):
        b, n = ctx.baseline, ref.shape[1]
        g = ctx.generator(salt=402)
        if b.domain.bounded:  # toward random corners of the box: the longest rays that stay inside
            corner = b.domain.low + (b.domain.high - b.domain.low) * torch.randint(
                0, 2, (self.random_rays, n), generator=g
            ).to(torch.float64)
            rand = corner - x0
        else:
            rand = torch.randn(self.random_rays, n, generator=g, dtype=torch.float64)
        k = min(self.pca_rays, n, ref.shape[0] - 1)
        pcs = fit_pca(ref, k, ctx.generator(salt=403)).components.T if k > 0 else torch.empty(0, n, dtype=torch.float64)
        parts = [rand, pcs, -pcs]
        sources = ["random"] * len(rand) + ["pca"] * (2 * len(pcs))
        objective = [None] * len(sources)
        evals, stopped = 0, None
        shifts = [torch.zeros(len(sources), n, dtype=torch.float64)]
        if not b.domain.bounded and self.optimised_rays > 0 and self.sphere_starts > 0:
            opt, values, evals, stopped = self._optimise(ctx, x0, bar)
            shift = torch.zeros_like(opt)
            if n <= self.max_features and not stopped:
                opt, shift, jac_evals, stopped = self._refine(ctx, ref, x0, opt)
                evals += jac_evals
            parts.append(opt)
            shifts.append(shift)
            sources += ["optimised"] * len(opt)
            objective += values
        dirs = torch.cat(parts)
        dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-300)
        return dirs, torch.cat(shifts), sources, objective, evals, stopped

    def _optimise(self, ctx: ProbeContext, x0: torch.Tensor, bar):
        """Minimise ``J(u) = ||r(x0 + T u)||² / T²`` (``→ ||(A_u − I) u||²`` far out) over unit ``u``,
        all starts in one batch with Adam; return the best distinct directions."""
        adapter, b = ctx.adapter, ctx.baseline
        n = x0.numel()
        T = SPHERE_RATIO * b.scale
        w = torch.randn(self.sphere_starts, n, generator=ctx.generator(salt=404), dtype=torch.float64)
        w = w.to(adapter.device, adapter.dtype).requires_grad_(True)
        origin = x0.to(adapter.device, adapter.dtype)
        m1, m2 = torch.zeros_like(w), torch.zeros_like(w)  # Adam moments (β = 0.9, 0.999)
        best_j = torch.full((self.sphere_starts,), math.inf, dtype=torch.float64)
        best_u = w.detach().double().cpu().clone()
        evals, stopped = 0, None
        for step in range(1, self.sphere_steps + 2):
            if (stopped := ctx.stop.reason()) is not None:
                break
            u = w / w.norm(dim=1, keepdim=True)
            xm, rec = adapter.reconstruct_model_space(unflat(adapter, origin + T * u))
            j = flat(xm - rec).pow(2).sum(dim=1) / T**2
            evals += self.sphere_starts
            jd = j.detach().double().cpu()
            better = jd < best_j
            best_j = torch.where(better, jd, best_j)
            best_u[better] = u.detach().double().cpu()[better]
            (grad,) = torch.autograd.grad(j.sum(), w)
            with torch.no_grad():
                m1.mul_(0.9).add_(grad, alpha=0.1)
                m2.mul_(0.999).addcmul_(grad, grad, value=0.001)
                w -= self.sphere_lr * (m1 / (1 - 0.9**step)) / ((m2 / (1 - 0.999**step)).sqrt() + 1e-12)
            bar.advance(1)
        order = torch.argsort(best_j)
        kept: list[int] = []
        for i in order.tolist():
            if not math.isfinite(best_j[i]):
                continue
            if all(float(best_u[i] @ best_u[k]) < DUPLICATE_COSINE for k in kept):
                kept.append(i)
            if len(kept) == self.optimised_rays:
                break
        return best_u[kept], [float(best_j[i]) for i in kept], evals, stopped

    def _refine(
        self, ctx: ProbeContext, ref: torch.Tensor, x0: torch.Tensor, dirs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, int, str | None]:
        """Sharpen each optimised direction in float64: take the exact local map ``A`` (Jacobian)
        10⁴·s out along it and move to the direction that ``A`` maps closest onto itself (the
        smallest right singular vector of ``(I − A)``, per feature in the model's input space),
        a few rounds in case that direction lies in a neighbouring cone.

        Then, as the affine check does with the offset, find a shift of the ray's start
        (orthogonal to the ray, at most the data's radius per singular direction) that makes the far-field
        residual ``(I − A) x − c`` smallest. Returns ``(directions, shifts, evaluations, why it stopped
        early or None)``; a direction left unrefined keeps its optimised value and no shift."""
        model = float64_verifier(ctx).adapter
        n = x0.numel()
        T = SPHERE_RATIO * ctx.baseline.scale
        D = feature_scale(model, n)[:, None]
        eye = torch.eye(n, dtype=torch.float64)

        def f(z: torch.Tensor) -> torch.Tensor:
            return flat(model.reconstruct(unflat(model, z[None].to(model.dtype))))[0].double()

        out, shifts, evals = dirs.clone(), torch.zeros_like(dirs), 0
        limit = start_shift_limit(ctx.baseline, ref)
        for i in range(len(dirs)):
            if (stopped := ctx.stop.reason()) is not None:
                return out, shifts, evals, stopped
            u = dirs[i]
            for _ in range(REFINE_ROUNDS):
                if ctx.stop.reached():
                    return out, shifts, evals, ctx.stop.reason()
                A = torch.autograd.functional.jacobian(f, x0 + T * u, vectorize=True)
                evals += n
                v = torch.linalg.svd((eye - A) / D).Vh[-1]
                v = v if float(v @ u) >= 0 else -v
                done = float((v - u).norm()) < 1e-12
                u = v
                if done:
                    break
            far = x0 + T * u
            with torch.no_grad():
                c = f(far) - A @ far
            evals += 1
            M = (eye - A) / D
            start = x0 + ((ref - x0) @ u).max() * u
            U, S, Vh = torch.linalg.svd(M @ (eye - torch.outer(u, u)))
            coef = (U.T @ (M @ start - c / D[:, 0])) / torch.where(S > 0, S, torch.inf)
            out[i], shifts[i] = u, -(coef * (coef.abs() <= limit)) @ Vh
        return out, shifts, evals, None

    # ------------------------------------------------------------------ measurement
    def _measure(self, ctx: ProbeContext, verifier, origins: torch.Tensor, dirs: torch.Tensor) -> dict:
        """Every ray at every checked distance, measured in float64: arrays ``[rays, distances]``
        with NaN where a point would leave the domain (a bounded domain adds the box edge).
        Rays go through in as few batches as memory allows (one for inputs of MNIST size)."""
        b, adapter = ctx.baseline, ctx.adapter
        ratios = ratio_grid(self.per_decade, 0.1, self.max_ratio)
        edge = box_exit(origins, dirs, b.domain).numpy()
        t = np.broadcast_to(ratios * b.scale, (len(dirs), len(ratios)))
        if b.domain.bounded:
            t = np.concatenate([t, edge[:, None]], axis=1)
            reaches = np.isfinite(edge) & (edge > 0)
            valid = np.concatenate([t[:, :-1] < edge[:, None], reaches[:, None]], axis=1)
        else:
            valid = np.ones_like(t, dtype=bool)
        R, K, n = len(dirs), t.shape[1], dirs.shape[1]
        out = {"ratios": ratios, "t": np.where(valid, t, np.nan), "valid": valid, "evaluations": int(valid.sum())}
        for key in ("loss", "dist", "nn"):
            out[key] = np.full((R, K), np.nan)
        out["measured"] = np.zeros((R, K), dtype=bool)  # NaN in "loss" is a model's NaN only where measured
        out["stable_from"], out["slope"], out["stopped"] = [None] * R, [None] * R, None
        out["extrapolated"], out["slope_tolerance"] = [None] * R, [None] * R
        group = max(1, RAY_CHUNK_ELEMENTS // (K * n))
        u, o = dirs.numpy(), origins.numpy()
        q_op = adapter.sq_threshold(b.tau_op)
        for g0 in range(0, R, group):
            if (stopped := ctx.stop.reason()) is not None:
                out["stopped"] = stopped
                break
            g1 = min(R, g0 + group)
            rows, cols = np.nonzero(valid[g0:g1])
            x = o[g0 + rows] + t[g0 + rows, cols][:, None] * u[g0 + rows]
            loss, dist, nn, rec = verifier.measure(unflat(adapter, torch.from_numpy(x)), stop=ctx.stop)
            done = len(loss)
            for key, val in (("loss", loss), ("dist", dist), ("nn", nn)):
                out[key][g0 + rows[:done], cols[:done]] = val
            out["measured"][g0 + rows[:done], cols[:done]] = True
            if done < len(rows):  # the stop came between two batches of this group
                out["stopped"] = ctx.stop.reason()
                break
            if b.domain.bounded:
                continue  # no far field inside a box
            recs = flat(torch.from_numpy(rec)).numpy().reshape(g1 - g0, K, n)
            xs = x.reshape(g1 - g0, K, n)
            out["stable_from"][g0:g1] = _stable_from(t[g0:g1], recs, xs, dtype_eps(verifier.dtype))
            step = t[g0:g1, -1] - t[g0:g1, -2]
            as_model = lambda a: torch.from_numpy(a).to(verifier.dtype)  # noqa: E731
            g = (
                model_residual(verifier.adapter, as_model(xs[:, -1] - xs[:, -2]), as_model(recs[:, -1] - recs[:, -2]))
                .double()
                .numpy()
                / step[:, None]
            )
            r_last = model_residual(verifier.adapter, as_model(xs[:, -1]), as_model(recs[:, -1])).double().numpy()
            slope = np.linalg.norm(g, axis=1)
            out["slope"][g0:g1] = slope.tolist()
            # where the far-field residual r_last + τ·g would cross τ_op (NaN: already above it at t_last)
            beyond = quadratic_reach(slope**2, 2 * (r_last * g).sum(axis=1), (r_last * r_last).sum(axis=1) - q_op)
            out["extrapolated"][g0:g1] = (t[g0:g1, -1] + beyond).tolist()
            gain = np.linalg.norm(recs[:, -1], axis=1) / t[g0:g1, -1]
            out["slope_tolerance"][g0:g1] = [slope_tolerance(n, verifier.dtype, float(v)) for v in gain]
        return out

    @staticmethod
    def _points(origins: torch.Tensor, dirs: torch.Tensor, rays: dict, mask: np.ndarray) -> torch.Tensor:
        """The checked points selected by ``mask`` (``[rays, distances]``), flattened."""
        rows, cols = np.nonzero(mask)
        return origins[rows] + torch.from_numpy(rays["t"][rows, cols])[:, None] * dirs[rows]

    def _summarise(
        self, ctx: ProbeContext, rays: dict, sources: list[str], objective: list, certifiable: bool
    ) -> list[dict]:
        """Per ray: where it becomes affine, its far-field slope and growth exponent, whether it is
        unbounded blind, and its verified blind distance, with the loss-vs-distance series."""
        b = ctx.baseline
        t, loss, dist = rays["t"], rays["loss"], rays["dist"]
        stable_from = rays["stable_from"]
        summaries = []
        for i in range(len(sources)):
            ok = rays["valid"][i]
            ti, li, di = t[i, ok], loss[i, ok], dist[i, ok]
            far = ti >= CERTIFY_FROM_RATIO * b.scale
            stable = (not b.domain.bounded) and stable_from[i] is not None
            flat_slope = rays["slope"][i] is not None and rays["slope"][i] <= rays["slope_tolerance"][i]
            unbounded = bool(certifiable and stable and flat_slope and far.any() and (li[far] <= b.tau_op).all())
            low = li <= b.tau_op
            blind = float(di[low].max()) if low.any() else 0.0
            extrapolated = rays["extrapolated"][i]
            summaries.append(
                {
                    "source": sources[i],
                    "sphere_objective": objective[i],
                    "stable_from_ratio": stable_from[i] / b.scale if stable_from[i] is not None else None,
                    "far_field_slope": rays["slope"][i],
                    "slope_tolerance": rays["slope_tolerance"][i],
                    "extrapolated_reach_ratio": (
                        extrapolated / b.scale
                        if stable
                        and certifiable
                        and extrapolated is not None
                        and math.isfinite(extrapolated)
                        and not unbounded
                        else None
                    ),
                    "growth_exponent": None if b.domain.bounded else growth_exponent(ti, li, b.tau_op),
                    "unbounded": unbounded,
                    "within_tau_min": bool(unbounded and (li[far] <= b.tau_min).all()),
                    "blind_distance": blind,
                    "blind_distance_ratio": blind / b.scale,
                    "min_loss_ratio": float(np.nanmin(li) / b.tau_op) if np.isfinite(li).any() else None,
                    "reach_ratio": float(ti.max() / b.scale) if len(ti) else 0.0,
                    "series": {"t": round_list(ti), "distance": round_list(di), "loss": round_list(li)},
                }
            )
        return summaries

    def _certificates(
        self, ctx: ProbeContext, rays: dict, summaries: list[dict], dirs: torch.Tensor, origins: torch.Tensor
    ) -> list[Finding]:
        """Certificate findings for unbounded rays and for rays blind beyond δ, one per distinct direction."""
        b, adapter = ctx.baseline, ctx.adapter
        order = sorted(
            range(len(summaries)), key=lambda i: (not summaries[i]["unbounded"], -summaries[i]["blind_distance"])
        )
        kept: list[int] = []
        findings = []
        for i in order:
            s = summaries[i]
            if not s["unbounded"] and s["blind_distance"] < b.min_distance:
                break
            if any(float(dirs[i] @ dirs[k]) >= DUPLICATE_COSINE for k in kept):
                continue
            t, loss, dist = rays["t"][i], rays["loss"][i], rays["dist"][i]
            if s["unbounded"]:
                j = int(np.nanargmin(np.abs(np.log(t / (EXAMPLE_RATIO * b.scale)))))
            else:
                j = int(np.nanargmax(np.where(loss <= b.tau_op, dist, -np.inf)))
            sev = b.severity(float(loss[j]), float(dist[j]))
            if sev is None:
                continue
            kept.append(i)
            x = origins[i] + float(t[j]) * dirs[i]
            _, _, _, rec = float64_verifier(ctx).measure(unflat(adapter, x[None]))
            nn = int(rays["nn"][i, j])
            details = {
                k: s[k]
                for k in (
                    "unbounded",
                    "within_tau_min",
                    "blind_distance",
                    "blind_distance_ratio",
                    "extrapolated_reach_ratio",
                    "growth_exponent",
                    "far_field_slope",
                    "slope_tolerance",
                    "stable_from_ratio",
                    "source",
                    "series",
                )
            }
            details["ray"] = {"origin": round_list(origins[i], 9), "direction": round_list(dirs[i], 9)}
            findings.append(
                measured_finding(
                    float64_verifier(ctx),
                    kind="certificate",
                    probe=self.name,
                    severity=sev,
                    loss=loss[j],
                    distance=dist[j],
                    nearest=nn,
                    x=x.reshape(adapter.input_shape).numpy(),
                    reconstruction=rec[0],
                    details=details,
                )
            )
            if len(findings) == self.max_certificates:
                break
        return findings


def _stable_from(t: np.ndarray, rec: np.ndarray, x: np.ndarray, eps: float) -> list[float | None]:
    """Per ray, the distance from which every checked reconstruction lies on one line (the
    activation pattern has stopped changing), if that holds over at least the last
    ``STABLE_DECADES`` decades; else ``None``. Each interior point is compared with the chord of
    its neighbours, relative to the size of the numbers involved."""
    if t.shape[1] < 3:
        return [None] * t.shape[0]
    w = ((t[:, 2:] - t[:, 1:-1]) / (t[:, 2:] - t[:, :-2]))[..., None]
    dev = np.linalg.norm(rec[:, 1:-1] - (w * rec[:, :-2] + (1 - w) * rec[:, 2:]), axis=2)
    norms = np.linalg.norm(rec, axis=2)
    size = norms[:, :-2] + norms[:, 1:-1] + norms[:, 2:] + np.linalg.norm(x[:, 1:-1], axis=2)
    straight = dev <= math.sqrt(eps) * size
    out: list[float | None] = []
    for i in range(t.shape[0]):
        bent = np.flatnonzero(~straight[i])
        t_start = t[i, bent[-1] + 1] if len(bent) else t[i, 0]  # first point of the final straight stretch
        out.append(float(t_start) if t_start <= t[i, -1] / 10**STABLE_DECADES else None)
    return out


def _source_summary(summaries: list[dict]) -> dict:
    """Per direction source: rays, unbounded rays and the median growth exponent."""
    out = {}
    for src in dict.fromkeys(s["source"] for s in summaries):
        group = [s for s in summaries if s["source"] == src]
        exps = [s["growth_exponent"] for s in group if s["growth_exponent"] is not None]
        out[src] = {
            "rays": len(group),
            "unbounded": sum(s["unbounded"] for s in group),
            "median_growth_exponent": float(np.median(exps)) if exps else None,
        }
    return out
