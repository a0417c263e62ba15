"""How far a box lies from the normal data: a lower bound of the distance, and the "near" test.

For a box ``[lo, hi]`` and the reference points ``P``:

* :func:`far_lower_bound`: a lower bound of ``min_{x ∈ box} min_i ‖x − p_i‖``. The exact box-to-point
  distance ``‖clamp(p, lo, hi) − p‖`` is taken for the ``shortlist`` references nearest to the
  box centre ``c``; every other reference ``p`` is at least ``‖c − p‖ − ρ ≥ d_k(c) − ρ`` from the
  box (``ρ`` the half-diagonal, ``d_k`` the k-th smallest centre distance), so one matrix product
  per batch replaces a pass over boxes × references × features.
* :func:`near_boxes`: some single reference lies within ``δ`` of *every* point of the box, i.e. of its
  farthest corner: ``Σ_j max((lo_j − p_j)², (hi_j − p_j)²) < δ²`` (computed exactly for the
  shortlist; shrunk by a rounding margin so that "near" is never claimed by rounding).
"""

from __future__ import annotations

import torch

from .ops import DTYPE

SHORTLIST = 32
RANK_SLACK = 1e-5  # covers the GEMM ranking error, about sqrt(n·eps)·(‖c‖ + ‖p‖), relative to that scale


class ReferenceSet:
    """The normal reference points ``[M, n]`` (data space, float64) with cached squared norms."""

    def __init__(self, points: torch.Tensor, chunk_elements: int = 1 << 23):
        self.points = points.detach().to("cpu", DTYPE).reshape(points.shape[0], -1)
        self.sq = self.points.pow(2).sum(dim=1)
        self.radius = float(self.sq.max().sqrt()) if len(self.sq) else 0.0
        self.chunk_elements = chunk_elements

    def __len__(self) -> int:
        return self.points.shape[0]

    def nearest(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(distances [N, k], indices [N, k])`` of the ``k`` nearest references, distances measured directly."""
        k = min(k, len(self))
        rows = max(1, self.chunk_elements // max(len(self), 1))
        dists, idxs = [], []
        for i in range(0, q.shape[0], rows):
            qb = q[i : i + rows]
            part = torch.addmm(self.sq.unsqueeze(0), qb, self.points.T, alpha=-2.0)
            idx = torch.topk(part, k, dim=1, largest=False, sorted=False).indices
            d = (qb.unsqueeze(1) - self.points[idx]).pow(2).sum(dim=2).sqrt()
            order = d.argsort(dim=1)
            dists.append(d.gather(1, order))
            idxs.append(idx.gather(1, order))
        return torch.cat(dists), torch.cat(idxs)

    def distance(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest-reference distance and index of each query (exact up to the ranking, see ``nearest``)."""
        d, i = self.nearest(q.to(DTYPE).reshape(q.shape[0], -1), 4)
        return d[:, 0], i[:, 0]


def far_lower_bound(ref: ReferenceSet, lo: torch.Tensor, hi: torch.Tensor, shortlist: int = SHORTLIST) -> torch.Tensor:
    """A lower bound ``[B]`` of the distance from each box ``[lo, hi]`` (``[B, n]``) to the nearest reference."""
    centre, rho = _centre_radius(lo, hi)
    d_c, idx = ref.nearest(centre, shortlist)
    p = ref.points[idx]  # [B, k, n]
    gap = (lo.unsqueeze(1) - p).clamp(min=0) + (p - hi.unsqueeze(1)).clamp(min=0)
    to_box = gap.pow(2).sum(dim=2).sqrt().min(dim=1).values
    if idx.shape[1] == len(ref):
        return to_box
    scale = centre.abs().max(dim=1).values + ref.radius
    beyond = d_c[:, -1] - rho - RANK_SLACK * scale  # every reference off the shortlist is at least this far
    return torch.minimum(to_box, beyond.clamp(min=0))


def near_boxes(
    ref: ReferenceSet, lo: torch.Tensor, hi: torch.Tensor, delta: float, shortlist: int = SHORTLIST
) -> torch.Tensor:
    """``[B]`` bool: one reference lies closer than ``delta`` to every point of the box (its farthest
    corner), tried for the references nearest the centre; shrunk by a rounding margin."""
    centre, rho = _centre_radius(lo, hi)
    near = torch.zeros(lo.shape[0], dtype=torch.bool)
    small = torch.nonzero(rho < delta).flatten()  # a box wider than the ball cannot fit in it
    if small.numel():
        lo, hi = lo[small], hi[small]
        p = ref.points[ref.nearest(centre[small], shortlist)[1]]
        corner_sq = torch.maximum((lo.unsqueeze(1) - p).pow(2), (hi.unsqueeze(1) - p).pow(2)).sum(dim=2)
        eps = torch.finfo(DTYPE).eps
        near[small] = corner_sq.min(dim=1).values < delta**2 * (1 - 4 * (lo.shape[1] + 4) * eps)
    return near


def _centre_radius(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = lo.to(DTYPE), hi.to(DTYPE)
    return (lo + hi) / 2, (hi - lo).pow(2).sum(dim=1).sqrt() / 2
