"""Exact nearest-neighbour distances and the input domain.

Distances use the GEMM identity ``||q−r||² = ||q||² + ||r||² − 2 q·r`` in chunks, so memory
stays bounded and the work runs as matrix products on the chosen device. The identity loses
precision when distances are tiny next to the norms, so the nearest candidates it finds
are re-measured directly (``refine``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError


class NearestNeighbours:
    """Exact 1-NN distances from query points to a fixed reference set.

    ``reference`` is flattened to ``[M, n]`` and kept on its device; its squared norms are
    cached. ``chunk_elements`` bounds the size of each distance block (queries × reference).
    """

    def __init__(self, reference: torch.Tensor, chunk_elements: int = 1 << 24, refine: int = 4):
        self.reference = reference.reshape(reference.shape[0], -1)
        self.ref_sq = self.reference.pow(2).sum(dim=1)
        self.chunk_elements = chunk_elements
        self.refine = refine

    def _nearest_indices(self, q: torch.Tensor, k: int, exclude_self: bool) -> torch.Tensor:
        """Indices ``[N, k]`` of the ``k`` nearest references by the GEMM identity (no grad)."""
        m = self.reference.shape[0]
        q_block = max(1, self.chunk_elements // max(m, 1))
        out = []
        with torch.no_grad():
            for i in range(0, q.shape[0], q_block):
                qb = q[i : i + q_block]
                # ||r||² − 2 q·r ranks references like the full distance: ||q||² is the same along a row
                part = torch.addmm(self.ref_sq.unsqueeze(0), qb, self.reference.T, alpha=-2.0)
                if exclude_self:
                    d2 = part + qb.pow(2).sum(dim=1, keepdim=True)
                    part = torch.where(d2 <= 1e-12 * (1 + self.ref_sq.unsqueeze(0)), torch.inf, part)
                out.append(torch.topk(part, k, dim=1, largest=False, sorted=False).indices)
        return torch.cat(out) if out else torch.empty(0, k, dtype=torch.long, device=q.device)

    def _direct(self, q: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Distances ``[N, k]`` from each query to its candidate references, measured directly in blocks."""
        rows = max(1, self.chunk_elements // max(idx.shape[1] * q.shape[1], 1))
        parts = [
            (q[i : i + rows].unsqueeze(1) - self.reference[idx[i : i + rows]]).pow(2).sum(dim=2).sqrt()
            for i in range(0, q.shape[0], rows)
        ]
        return torch.cat(parts) if parts else q.new_empty(0, idx.shape[1])

    def query(
        self, queries: torch.Tensor, exclude_self: bool = False, refine: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(distances [N], indices [N])`` of each query's nearest reference sample.

        Differentiable w.r.t. ``queries`` (the distance to the selected neighbour is recomputed
        directly). ``exclude_self`` skips exact duplicates at distance 0 (for leave-one-out scales).
        ``refine`` overrides how many GEMM candidates are re-measured (1 is enough for a search
        step, where a near-tie between two neighbours does not matter; verification uses the default).
        """
        q = queries.reshape(queries.shape[0], -1).to(self.reference.dtype)
        k = self.refine if refine is None else max(1, refine)
        idx = self._nearest_indices(q, min(k, self.reference.shape[0]), exclude_self)
        # direct re-measure of the k candidates: exact where the GEMM identity is not
        dist = self._direct(q, idx)
        if exclude_self:
            dist = torch.where(dist == 0, torch.inf, dist)
        best = dist.argmin(dim=1)
        rows = torch.arange(q.shape[0], device=q.device)
        return dist[rows, best], idx[rows, best]

    def shortlist(self, queries: torch.Tensor, k: int) -> Shortlist:
        """The references among the ``k`` nearest of any query (no gradient), for
        :meth:`nearest_among` while the queries move only a little (the steps of a search)."""
        q = queries.detach().reshape(queries.shape[0], -1).to(self.reference.dtype)
        rows = torch.unique(self._nearest_indices(q, min(k, self.reference.shape[0]), exclude_self=False))
        return Shortlist(rows, self.reference[rows], self.ref_sq[rows])

    def nearest_among(self, queries: torch.Tensor, shortlist: Shortlist) -> torch.Tensor:
        """Distance ``[N]`` from each query to its nearest shortlisted reference (differentiable).
        An upper bound of the true nearest distance, equal to it while the true nearest is on the
        list; one small matrix product instead of a pass over the whole reference set, and the
        gradient flows through the one chosen reference only."""
        q = queries.reshape(queries.shape[0], -1).to(self.reference.dtype)
        with torch.no_grad():
            best = torch.addmm(shortlist.sq.unsqueeze(0), q, shortlist.points.T, alpha=-2.0).argmin(dim=1)
        return (q - shortlist.points[best]).pow(2).sum(dim=1).sqrt()


@dataclass(frozen=True)
class Shortlist:
    """A subset of the reference set: its row numbers, points ``[K, n]`` and squared norms."""

    rows: torch.Tensor
    points: torch.Tensor
    sq: torch.Tensor


@dataclass(frozen=True)
class Domain:
    """The declared input domain: a box ``[low, high]`` (scalars) or unbounded."""

    low: float | None
    high: float | None
    mode: str
    reason: str

    @property
    def bounded(self) -> bool:
        return self.low is not None and self.high is not None

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(self.low, self.high) if self.bounded else x

    def to_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "mode": self.mode, "reason": self.reason}


def resolve_domain(spec: str, data: np.ndarray) -> Domain:
    """``auto`` | ``none`` | ``LO,HI`` → :class:`Domain`.

    ``auto`` recognises the usual image ranges from the normal data: [0, 1], [-1, 1] and
    [0, 255]; anything else (tabular features) is left unbounded, because a bounded box fitted
    to the data would forbid exactly the far-away inputs the audit looks for.
    """
    spec = (spec or "auto").strip().lower()
    if spec == "none":
        return Domain(None, None, "none", "unbounded (--bounds none)")
    if spec != "auto":
        try:
            lo, hi = (float(v) for v in spec.split(","))
        except ValueError:
            raise InputError(f"--bounds {spec!r}: use auto, none or LO,HI (e.g. 0,1)") from None
        if not lo < hi:
            raise InputError(f"--bounds {spec!r}: LO must be smaller than HI")
        return Domain(lo, hi, "explicit", f"[{lo:g}, {hi:g}] (--bounds)")
    lo, hi = float(np.min(data)), float(np.max(data))
    is_int = np.issubdtype(data.dtype, np.integer) or bool(
        np.all(np.mod(np.asarray(data[: min(len(data), 256)]), 1) == 0)
    )
    for low, high in ((0.0, 1.0), (-1.0, 1.0)):
        if lo >= low and hi <= high and (hi - lo) > 0.5 * (high - low):
            return Domain(low, high, "auto", f"[{low:g}, {high:g}]: the normal data spans {lo:.3g}..{hi:.3g}")
    if lo >= 0 and hi <= 255 and hi > 127 and is_int:
        return Domain(0.0, 255.0, "auto", f"[0, 255]: integer data spanning {lo:.3g}..{hi:.3g}")
    return Domain(
        None, None, "auto", f"unbounded: the normal data spans {lo:.3g}..{hi:.3g}, not a standard image range"
    )
