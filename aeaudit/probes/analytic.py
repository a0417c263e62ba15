"""Shared numerics of the analytic checks (``pca-reference``, ``affine``, ``far-field``).

The checks reason about the *residual* ``r(x) = x_m − f(x_m)`` in the model's own input
space (``x_m`` is ``x`` after the model's preprocessing), flattened to ``n`` features. The
loss is ``||r||²/n`` (MSE) or ``||r||`` (PyOD), so a loss threshold is a threshold on ``||r||²``.
Everything here works on flattened float64 tensors on the CPU unless a docstring says otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..baseline import Baseline
from ..findings import Verifier
from ..geometry import Domain
from ..model.adapter import AutoencoderAdapter
from .base import ProbeContext

EXAMPLE_RATIO = 1e3  # example point of an unbounded certificate: 1000·s out, far but not absurd
CERTIFY_FROM_RATIO = 10.0  # "unbounded" needs loss ≤ τ_op at every checked t from 10·s up
DENSE_SVD_LIMIT = 4096
ROUNDING_FLOOR = 1e-12  # losses below 1e-12·τ_op are rounding, not growth


def start_shift_limit(b: Baseline, ref: torch.Tensor) -> float:
    """How far a ray's start may be moved, per singular direction, onto the low-loss set: the
    larger of ``s`` and the data's radius about its mean (keeps the start beside the data)."""
    return max(b.scale, float((ref - ref.mean(dim=0)).norm(dim=1).max()))


def float64_verifier(ctx: ProbeContext) -> Verifier:
    """The audit's float64 CPU verifier (built here when a bare context has none)."""
    return ctx.verifier if ctx.verifier is not None else Verifier(ctx.adapter, ctx.baseline)


SLOPE_TOLERANCE = 16.0


def dtype_eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def slope_tolerance(n: int, dtype: torch.dtype, gain: float) -> float:
    """The rounding error of a residual slope measured in ``dtype`` on a map of size ``gain``:
    ``16·sqrt(n)·eps·max(1, gain)``. A slope below it cannot be told from zero; one above it is a
    finite reach, however far (a gain of 1 + a few float32 ulps crosses τ_op eventually)."""
    return SLOPE_TOLERANCE * math.sqrt(n) * dtype_eps(dtype) * max(1.0, gain)


def quadratic_reach(a: np.ndarray, lin: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Largest ``t ≥ 0`` with ``a t² + lin t + c ≤ 0`` when ``c ≤ 0`` (NaN when ``c > 0``): how far
    ``||r0 + t·g||² = c' + lin·t + a·t²`` stays below a threshold. The numerically stable root,
    ``inf`` for ``a = lin = 0``."""
    disc = np.sqrt(np.maximum(lin * lin - 4 * a * c, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(lin >= 0, np.where(lin + disc > 0, -2 * c / (lin + disc), np.inf), (disc - lin) / (2 * a))
    return np.where(c > 0, np.nan, np.where(np.isnan(t), np.inf, t))


def flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def unflat(adapter: AutoencoderAdapter, x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], *adapter.input_shape)


def model_residual(adapter: AutoencoderAdapter, x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
    """``r`` from a data-space batch and its data-space reconstruction, flattened ``[N, n]``."""
    return flat(adapter.to_model_space(x) - adapter.to_model_space(rec))


def feature_scale(adapter: AutoencoderAdapter, n: int) -> torch.Tensor:
    """Per-feature divisor of the model's preprocessing (``r = (x − rec) / D``); ones without one."""
    if adapter.preprocess is None:
        return torch.ones(n, dtype=torch.float64)
    d = (adapter.preprocess.std + adapter.preprocess.eps).detach().to("cpu", torch.float64)
    return torch.broadcast_to(d.reshape(-1) if d.numel() > 1 else d, (n,)).clone()


def normal_flat(ctx: ProbeContext) -> torch.Tensor:
    """All normal data (reference and held-out), flattened, float64 on the CPU: the points every
    distance is measured against, so hull points and levels come from the same set."""
    return flat(ctx.baseline.normal.detach()).to("cpu", torch.float64)


@dataclass
class PCA:
    mean: torch.Tensor  # [n]
    components: torch.Tensor  # [n, d], orthonormal columns
    explained_variance_ratio: np.ndarray

    def residual_sq(self, x: torch.Tensor) -> torch.Tensor:
        """``||x − x̂||²`` of PCA's own reconstruction ``x̂ = x̄ + P (x − x̄)``."""
        c = x - self.mean
        return (c - (c @ self.components) @ self.components.T).pow(2).sum(dim=1)


def fit_pca(x: torch.Tensor, d: int, generator: torch.Generator | None = None) -> PCA:
    """PCA with ``d`` components of the rows of ``x`` (float64). Exact SVD when it fits in
    memory; for very large data a seeded randomized range finder with power iterations."""
    x = x.to(torch.float64)
    mean = x.mean(dim=0)
    c = x - mean
    d = max(1, min(d, *c.shape))
    total = float(c.pow(2).sum())
    if min(c.shape) <= DENSE_SVD_LIMIT:
        _, s, vh = torch.linalg.svd(c, full_matrices=False)
    else:
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        q = min(d + 10, *c.shape)
        y = c @ torch.randn(c.shape[1], q, generator=generator, dtype=torch.float64)
        for _ in range(4):
            y = c @ (c.T @ torch.linalg.qr(y).Q)
        _, s, vh = torch.linalg.svd(torch.linalg.qr(y).Q.T @ c, full_matrices=False)
    top = s[:d].pow(2)
    ratio = (top / total).numpy() if total > 0 else np.zeros(d)
    return PCA(mean, vh[:d].T.contiguous(), ratio)


def extreme_rows(points: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Per direction ``v`` (rows of ``directions``), the index of the point maximising ``<x_i, v>``:
    a vertex of the data's convex hull, from which moving along ``+v`` gets farther from every
    point (Theorem 2 of "Autoencoders for anomaly detection are unreliable")."""
    return (points @ directions.T).argmax(dim=0)


def box_exit(x0: torch.Tensor, u: torch.Tensor, domain: Domain) -> torch.Tensor:
    """Largest ``t`` with ``x0 + t·u`` inside the domain, per row of ``u`` (``inf`` when unbounded)."""
    if not domain.bounded:
        return torch.full((u.shape[0],), math.inf, dtype=torch.float64)
    x0 = x0.reshape(1, -1) if x0.dim() == 1 else x0
    up = torch.where(u > 0, (domain.high - x0) / u, torch.full_like(u, math.inf))
    down = torch.where(u < 0, (domain.low - x0) / u, torch.full_like(u, math.inf))
    return torch.minimum(up, down).amin(dim=1).clamp_min(0.0)


def inside(x: torch.Tensor, domain: Domain, slack: float = 1e-9) -> torch.Tensor:
    if not domain.bounded:
        return torch.ones(x.shape[0], dtype=torch.bool)
    span = domain.high - domain.low
    return ((x >= domain.low - slack * span) & (x <= domain.high + slack * span)).all(dim=1)


def ratio_grid(per_decade: int, low: float, high: float) -> np.ndarray:
    """Distance ratios ``low … high`` (powers of ten), ``per_decade`` per decade, ends included."""
    lo, hi = math.log10(low), math.log10(high)
    k = int(round((hi - lo) * per_decade))
    return np.logspace(lo, hi, k + 1)


def growth_exponent(t: np.ndarray, loss: np.ndarray, tau: float, decades: float = 2.0) -> float | None:
    """Log-log slope of loss against ``t`` over the last ``decades`` of the checked range:
    about 2 where the residual grows linearly (an ordinary ray), about 0 where it stays bounded.
    Losses below ``ROUNDING_FLOOR · tau`` count as that floor: their growth is float64 rounding."""
    ok = np.isfinite(t) & np.isfinite(loss) & (t > 0)
    t, loss = t[ok], loss[ok]
    if len(t) < 3:
        return None
    far = t >= t.max() / 10**decades
    if far.sum() < 3:
        return None
    floor = ROUNDING_FLOOR * tau
    slope = np.polyfit(np.log10(t[far]), np.log10(np.maximum(loss[far], floor)), 1)[0]
    return float(slope)


def affinity_test(
    adapter: AutoencoderAdapter, reference: torch.Tensor, scale: float, generator: torch.Generator, trials: int = 16
) -> tuple[bool, float, float, int]:
    """Is ``f`` affine? Checks ``f(αx+βy) − αf(x) − βf(y) − (1−α−β)f(0) = 0`` on normal points,
    points 10³·s out and points 10⁶·s out, with random ``α, β`` in [−2, 2].

    The deviation is measured relative to the size of the four terms, so the tolerance
    ``sqrt(eps)`` of ``adapter``'s dtype scales with the numbers involved. Returns
    ``(affine, largest relative deviation, tolerance, forward evaluations)``.
    """
    m, n = reference.shape
    g = generator
    mean = reference.mean(dim=0)
    half = max(1, trials // 2)

    def far(k: int, ratio: float) -> torch.Tensor:
        u = torch.randn(k, n, generator=g, dtype=torch.float64)
        return mean + ratio * scale * u / u.norm(dim=1, keepdim=True)

    rows = lambda k: reference[torch.randint(0, m, (k,), generator=g)]  # noqa: E731
    x = torch.cat([rows(half), far(trials - half, 1e3)])
    y = torch.cat([far(half, 1e6), rows(trials - half)])
    ab = torch.rand(trials, 2, generator=g, dtype=torch.float64) * 4 - 2
    a, b = ab[:, :1], ab[:, 1:]
    c = 1 - a - b
    z = a * x + b * y
    pts = torch.cat([x, y, z, torch.zeros(1, n, dtype=torch.float64)])
    with torch.no_grad():
        out = adapter.batched(adapter.reconstruct, unflat(adapter, pts.to(adapter.dtype)))
    out = flat(out).to("cpu", torch.float64)
    fx, fy, fz, f0 = out[:trials], out[trials : 2 * trials], out[2 * trials : 3 * trials], out[-1:]
    dev = (fz - a * fx - b * fy - c * f0).norm(dim=1)
    size = (
        fz.norm(dim=1)
        + a.abs()[:, 0] * fx.norm(dim=1)
        + b.abs()[:, 0] * fy.norm(dim=1)
        + c.abs()[:, 0] * f0.norm(dim=1)
    )
    rel = float((dev / size.clamp_min(np.finfo(np.float64).tiny)).max())
    tol = math.sqrt(dtype_eps(adapter.dtype))
    return bool(math.isfinite(rel) and rel <= tol), rel, tol, int(pts.shape[0])


def round_list(values, digits: int = 6) -> list:
    """Floats with ``digits`` significant digits for the report (non-finite values kept)."""
    out = []
    for v in np.asarray(values, dtype=np.float64).ravel():
        out.append(float(f"{v:.{digits}g}") if math.isfinite(v) else float(v))
    return out
