"""Falsification inside boxes: a few projected-gradient steps toward a low-loss, far point.

For each box, ``starts`` points (the centre, then seeded uniform draws) are evaluated; when the
best of them scores below ``gate·τ_op`` the box gets ``steps`` signed-gradient steps (step size
halving from half the box, in box-normalised coordinates) on ``loss/τ_op + 10·max(0, 1.05 − d/δ)``,
projected back into the box. ``d`` during the steps is the distance to a shortlist of references
(an upper bound of the true one); every kept point is then measured exactly. A point counts only
when its float64 loss is ≤ ``τ_op`` and its exact distance to the normal data is ≥ ``δ`` (and,
when a ``model_loss`` is given, the model's own float64 loss agrees).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .distance import ReferenceSet
from .network import Network
from .ops import DTYPE

FAR_WEIGHT, FAR_TARGET = 10.0, 1.05
SHORTLIST = 8


@dataclass
class Attempt:
    """Per box: whether a verified point was found, and the best one (``inputs``: chain inputs)."""

    found: torch.Tensor  # [B] bool
    inputs: torch.Tensor  # [B, d]
    points: torch.Tensor  # [B, n] data space
    loss: torch.Tensor  # [B]
    distance: torch.Tensor  # [B]
    nearest: torch.Tensor  # [B] reference row
    evaluations: int  # points × (1 + steps) evaluated
    low: torch.Tensor | None = None  # [B] bool: some evaluated point has loss ≤ τ_op, far or not


def falsify(
    net: Network,
    ref: ReferenceSet,
    lo: torch.Tensor,
    hi: torch.Tensor,
    *,
    tau_op: float,
    delta: float,
    starts: int,
    steps: int,
    gate: float,
    generator: torch.Generator,
    model_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Attempt:
    B, d = lo.shape
    width = hi - lo
    u = torch.rand(B, max(starts, 1), d, generator=generator, dtype=DTYPE)
    u[:, 0] = 0.5
    z = (lo.unsqueeze(1) + u * width.unsqueeze(1)).reshape(-1, d)
    box_of = torch.arange(B).repeat_interleave(u.shape[1])
    loss, point = _evaluate(net, z)
    evaluations = z.shape[0]
    cands = [(z, point, loss, box_of)]
    promising = loss.reshape(B, -1).min(dim=1).values <= gate * tau_op
    if steps > 0 and promising.any():
        rows = promising[box_of]
        walked = _descend(net, ref, z[rows], lo[box_of[rows]], hi[box_of[rows]], tau_op, delta, steps)
        evaluations += int(rows.sum()) * steps
        w_loss, w_point = _evaluate(net, walked)
        cands.append((walked, w_point, w_loss, box_of[rows]))
    z, point, loss, box_of = (torch.cat(t) for t in zip(*cands))
    low = torch.zeros(B, dtype=torch.bool)
    low[box_of[loss <= tau_op]] = True
    ok, dist, nearest = verify(ref, point, loss, tau_op=tau_op, delta=delta, model_loss=model_loss)
    attempt = _best_per_box(B, d, ok, z, point, loss, dist, nearest, box_of, evaluations)
    attempt.low = low
    return attempt


def verify(
    ref: ReferenceSet,
    point: torch.Tensor,
    loss: torch.Tensor,
    *,
    tau_op: float,
    delta: float,
    model_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
):
    """``(ok, distance, nearest)``: float64 ``loss ≤ τ_op``, exact distance ``≥ δ`` and, when given,
    the model's own loss ``≤ τ_op``. Distances are measured only where the loss already qualifies."""
    ok = (loss <= tau_op) & torch.isfinite(loss)
    dist = torch.full_like(loss, torch.nan)
    nearest = torch.full(loss.shape, -1, dtype=torch.long)
    idx = torch.nonzero(ok).flatten()
    if idx.numel():
        dist[idx], nearest[idx] = ref.distance(point[idx])
        ok[idx] = dist[idx] >= delta
    idx = torch.nonzero(ok).flatten()
    if model_loss is not None and idx.numel():
        ok[idx] = model_loss(point[idx]).to(DTYPE).flatten() <= tau_op
    return ok, dist, nearest


def _evaluate(net: Network, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return net.evaluate(z)


def _descend(net, ref, z, lo, hi, tau_op, delta, steps) -> torch.Tensor:
    """Signed-gradient steps in box coordinates; returns the final iterates."""
    width = (hi - lo).clamp(min=torch.finfo(DTYPE).tiny)
    with torch.no_grad():
        _, start_point = net.evaluate(z)
    _, idx = ref.nearest(start_point, SHORTLIST)
    shortlist = ref.points[idx]  # [N, k, n]
    u = ((z - lo) / width).detach()
    for t in range(steps):
        u.requires_grad_(True)
        loss, point = net.evaluate(lo + u * width)
        d = (point.unsqueeze(1) - shortlist).pow(2).sum(dim=2).min(dim=1).values.clamp(min=1e-300).sqrt()
        objective = loss / tau_op + FAR_WEIGHT * torch.relu(FAR_TARGET - d / delta)
        (grad,) = torch.autograd.grad(objective.sum(), u)
        with torch.no_grad():
            u = (u - 0.5 ** (t + 1) * grad.sign()).clamp(0.0, 1.0)
    return lo + u.detach() * width


def _best_per_box(B, d, ok, z, point, loss, dist, nearest, box_of, evaluations) -> Attempt:
    """For each box, the verified point with the lowest loss (NaN placeholders where none)."""
    idx = torch.nonzero(ok).flatten()
    idx = idx[torch.argsort(loss[idx], stable=True)]
    idx = idx[torch.argsort(box_of[idx], stable=True)]  # grouped by box, lowest loss first
    first = torch.ones(idx.numel(), dtype=torch.bool)
    first[1:] = box_of[idx[1:]] != box_of[idx[:-1]]
    idx = idx[first]
    boxes = box_of[idx]
    found = torch.zeros(B, dtype=torch.bool)
    found[boxes] = True

    def per_box(values: torch.Tensor, fill) -> torch.Tensor:
        out = torch.full((B, *values.shape[1:]), fill, dtype=values.dtype)
        out[boxes] = values[idx]
        return out

    return Attempt(
        found,
        per_box(z, torch.nan),
        per_box(point, torch.nan),
        per_box(loss, torch.inf),
        per_box(dist, torch.nan),
        per_box(nearest, -1),
        evaluations,
    )
