"""Paths between findings: whether two verified findings lie in one blind region.

Two findings are joined when the path between them holds — loss ≤ τ_op at every checked point and
at least ``min(s, δ)`` from every normal sample all along (the rule and why: :mod:`aeaudit.regions`).
This module checks such paths in float64, batch by batch, and joins the findings union-find style:
first along each finding's nearest neighbours, then between representatives of the first groups.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .baseline import Baseline
from .findings import Verifier

NEIGHBOURS = 8  # nearest findings tried per finding
PATH_SPACING = 0.5  # checked points on a path at most 0.5·s apart
PATH_POINTS_MAX = 15
REFINE_LEVELS = 8  # a stretch of a path is halved at most this often to show it stays far from the data
REFINE_MAX_STRETCHES = 4096  # stretches halved at once; paths needing more fail
PAIR_BATCH = 256  # paths checked per batch
FAILED_PER_PAIR = 3  # failed paths between two groups before they stop being tried
REPRESENTATIVES = 4  # members per group used to link groups
LINK_COMPONENTS = 32  # groups linked pairwise through their representatives
PROJECTION_DIM, PROJECTION_SEED = 64, 15  # nearest findings are ranked in this fixed projection
MAX_PATH_EVALUATIONS = 100_000  # model evaluations on paths; beyond it regions may stay split


class UnionFind:
    """Groups of finding indices; a group's root is its best-ranked (lowest) index."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


class PathChecker:
    """Checks, batch by batch in float64, whether the path between two findings holds: loss ≤ τ_op
    at every checked point, and at least ``min(s, δ)`` from every normal sample all along.

    A path is the polyline through its checked points: points of the straight segment, or decodes
    of the latent segment when both ends came from latent codes. The distance to the normal data is
    1-Lipschitz, so a stretch between two points at distances ``d₁, d₂`` and ``h`` apart stays at
    least ``(d₁ + d₂ − h) / 2`` away: stretches where that bound is too low are halved (at most
    ``REFINE_LEVELS`` times, then the path fails), so a path cannot step over the normal data
    between its checked points. The loss has no such bound; it is checked at the points only."""

    def __init__(
        self,
        verifier: Verifier,
        baseline: Baseline,
        X: torch.Tensor,
        latents: list[torch.Tensor | None],
        distances: np.ndarray,
    ):
        self.model, self.neighbours, self.domain = verifier.adapter, verifier.neighbours, baseline.domain
        self.tau, self.far = baseline.tau_op, min(baseline.scale, baseline.min_distance)
        self.spacing = PATH_SPACING * baseline.scale
        self.X, self.latents, self.distances = X, latents, torch.as_tensor(distances, dtype=torch.float64)
        self.evaluations = 0
        self.stopped = False  # candidate paths were left unchecked when the evaluations ran out

    @property
    def exhausted(self) -> bool:
        return self.evaluations >= MAX_PATH_EVALUATIONS

    def _decoded(self, i: int, j: int) -> bool:
        zi, zj = self.latents[i], self.latents[j]
        return zi is not None and zj is not None and zi.shape == zj.shape and self.model.has_latent

    def _distance(self, x: torch.Tensor) -> torch.Tensor:
        return self.neighbours.query(x.to(self.neighbours.reference.dtype))[0].double().cpu()

    @torch.no_grad()
    def check(self, pairs: list[tuple[int, int]]) -> np.ndarray:
        """Whether each ``(i, j)`` path holds."""
        if not pairs:
            return np.zeros(0, dtype=bool)
        i, j = (np.fromiter((p[k] for p in pairs), dtype=np.int64, count=len(pairs)) for k in (0, 1))
        length = (self.X[i] - self.X[j]).norm(dim=1).numpy()
        m = np.clip(np.ceil(length / self.spacing).astype(np.int64) - 1, 1, PATH_POINTS_MAX)
        owner = np.repeat(np.arange(len(pairs)), m)
        tt = torch.from_numpy(np.concatenate([np.arange(1, k + 1) / (k + 1) for k in m]))[:, None]
        points = self.X[i[owner]] + tt * (self.X[j[owner]] - self.X[i[owner]])
        decoded = np.array([self._decoded(a, b) for a, b in pairs])
        rows = np.flatnonzero(decoded[owner])
        if rows.size:
            za = torch.stack([self.latents[a] for a in i[owner[rows]]])
            zb = torch.stack([self.latents[b] for b in j[owner[rows]]])
            z = (za + tt[rows] * (zb - za)).reshape(len(rows), *self.model.latent_shape)
            x = self.model.batched(lambda zz: self.domain.project(self.model.decode(zz)), z, 512)
            points[rows] = x.reshape(len(rows), -1).to(points.dtype)
        shaped = points.reshape(len(points), *self.model.input_shape).to(self.model.dtype)
        loss = self.model.losses(shaped, 512).double().cpu().numpy()
        self.evaluations += len(points)
        high = ~(np.isfinite(loss) & (loss <= self.tau))
        ok = np.bincount(owner, weights=high, minlength=len(pairs)) == 0
        # a straight path whose ends are far enough apart from the data for its length is far all along
        far_ends = (self.distances[i] + self.distances[j]).numpy() - length >= 2 * self.far
        todo = np.flatnonzero(ok & (decoded | ~far_ends))
        if todo.size:
            ok[todo] = self._far_all_along(todo, i, j, owner, points)
        return ok

    def _far_all_along(
        self, todo: np.ndarray, i: np.ndarray, j: np.ndarray, owner: np.ndarray, points: torch.Tensor
    ) -> np.ndarray:
        """For the paths ``todo``: whether every stretch of the polyline through their points stays at
        least ``far`` from the normal data, by the Lipschitz bound, halving stretches where it is too low
        (a path still open after ``REFINE_LEVELS`` halvings, or beyond ``REFINE_MAX_STRETCHES``, fails)."""
        keep = np.isin(owner, todo)
        inner = points[keep]
        path_of = np.searchsorted(todo, owner[keep])  # 0 … len(todo) − 1, in order
        n, k = len(inner), len(todo)
        d_inner = self._distance(inner) if n else torch.empty(0, dtype=torch.float64)
        good = np.ones(k, dtype=bool)
        good[path_of[(d_inner < self.far).numpy()]] = False
        # each path's polyline: its start, its points, its end; as stretches (P → Q) over one vertex table
        vertices = torch.cat([inner, self.X[i[todo]], self.X[j[todo]]])
        dist = torch.cat([d_inner, self.distances[i[todo]], self.distances[j[todo]]])
        e = np.arange(n)
        block = np.flatnonzero(np.r_[True, path_of[1:] != path_of[:-1]]) + np.arange(k)  # every path has points
        last = np.r_[block[1:], n + k] - 1
        p_idx, q_idx = np.empty(n + k, dtype=np.int64), np.empty(n + k, dtype=np.int64)
        p_idx[block], p_idx[e + path_of + 1] = n + np.arange(k), e
        q_idx[e + path_of], q_idx[last] = e, n + k + np.arange(k)
        path = np.repeat(np.arange(k), last - block + 1)
        P, Q, dP, dQ = vertices[p_idx], vertices[q_idx], dist[p_idx], dist[q_idx]
        for level in range(REFINE_LEVELS + 1):
            short = (dP + dQ - (Q - P).norm(dim=1)).numpy() >= 2 * self.far
            open_ = np.flatnonzero(good[path] & ~short)
            if open_.size == 0:
                break
            if level == REFINE_LEVELS or open_.size > REFINE_MAX_STRETCHES:
                good[path[open_]] = False
                break
            M = (P[open_] + Q[open_]) / 2
            dM = self._distance(M)
            good[path[open_][(dM < self.far).numpy()]] = False
            P, Q = torch.cat([P[open_], M]), torch.cat([M, Q[open_]])
            dP, dQ = torch.cat([dP[open_], dM]), torch.cat([dM, dQ[open_]])
            path = np.concatenate([path[open_], path[open_]])
        return good


def _neighbour_edges(
    X: torch.Tensor, k: int, near: float, block: int = 1024
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows as pairs ``(i, j)``, ``i < j``, shortest first, and
    whether each pair is a near-duplicate (exactly at most ``near`` apart).

    Neighbours are only candidates, so they are ranked cheaply: in float32 by the GEMM identity,
    blockwise, and for inputs of more than ``PROJECTION_DIM`` features in a fixed random projection
    to that many (lengths kept to within about ±25 %, a dozen times less work for images)."""
    n = X.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=bool)
    Xf = X.float()
    if Xf.shape[1] > PROJECTION_DIM:
        g = torch.Generator().manual_seed(PROJECTION_SEED)
        Xf = Xf @ (torch.randn(Xf.shape[1], PROJECTION_DIM, generator=g) / math.sqrt(PROJECTION_DIM))
    sq = Xf.pow(2).sum(dim=1)
    cols, approx = [], []
    for s in range(0, n, block):
        part = torch.addmm(sq[None, :], Xf[s : s + block], Xf.T, alpha=-2.0)  # + ||x_row||² ranks the same
        rows = torch.arange(part.shape[0])
        part[rows, s + rows] = torch.inf
        best = torch.topk(part, k, dim=1, largest=False)
        cols.append(best.indices.numpy())
        approx.append((best.values + sq[s : s + block, None]).clamp_min(0).sqrt().numpy())
    rows = np.repeat(np.arange(n), k)
    cols, approx = np.concatenate(cols).ravel(), np.concatenate(approx).ravel()
    i, j = np.minimum(rows, cols), np.maximum(rows, cols)
    _, first = np.unique(i * n + j, return_index=True)
    i, j, approx = i[first], j[first], approx[first]
    order = np.lexsort((j, i, approx))
    i, j, approx = i[order], j[order], approx[order]
    is_near = np.zeros(len(i), dtype=bool)
    maybe = np.flatnonzero(approx <= 2 * near)
    is_near[maybe] = (X[i[maybe]] - X[j[maybe]]).norm(dim=1).numpy() <= near
    return i, j, is_near


def _join(uf: UnionFind, checker: PathChecker, pairs: list[tuple[int, int]]) -> None:
    """Check candidate paths in order, batch by batch, joining the ends of those that hold. A pair
    already in one group is skipped, as is a pair of groups between which ``FAILED_PER_PAIR`` paths
    failed; checking stops when the checker's evaluations run out."""
    failures: dict[tuple[int, int], int] = {}
    pos = 0
    while pos < len(pairs) and not checker.exhausted:
        batch = []
        while pos < len(pairs) and len(batch) < PAIR_BATCH:
            i, j = pairs[pos]
            pos += 1
            a, b = sorted((uf.find(i), uf.find(j)))
            if a != b and failures.get((a, b), 0) < FAILED_PER_PAIR:
                batch.append((i, j))
        for (i, j), ok in zip(batch, checker.check(batch)):
            a, b = sorted((uf.find(i), uf.find(j)))
            if ok:
                uf.union(a, b)
            elif a != b:
                failures[(a, b)] = failures.get((a, b), 0) + 1
    checker.stopped |= pos < len(pairs)


def _join_neighbours(uf: UnionFind, checker: PathChecker, X: torch.Tensor, near: float) -> None:
    """Join findings along their nearest-neighbour paths, shortest first; near-duplicates without a check."""
    i_all, j_all, is_near = _neighbour_edges(X, NEIGHBOURS, near)
    for i, j in zip(i_all[is_near].tolist(), j_all[is_near].tolist()):
        uf.union(i, j)
    _join(uf, checker, list(zip(i_all[~is_near].tolist(), j_all[~is_near].tolist())))


def _representatives(members: list[int], X: torch.Tensor) -> list[int]:
    """The best-ranked member, then farthest-point picks: up to ``REPRESENTATIVES`` spread over the group."""
    reps = [members[0]]
    if len(members) > 1:
        pts = X[members]
        gap = (pts - X[members[0]]).norm(dim=1)
        while len(reps) < min(REPRESENTATIVES, len(members)):
            k = int(torch.argmax(gap))
            if float(gap[k]) <= 0:
                break
            reps.append(members[k])
            gap = torch.minimum(gap, (pts - X[members[k]]).norm(dim=1))
    return reps


def _link_groups(uf: UnionFind, checker: PathChecker, X: torch.Tensor) -> None:
    """One path between the closest representatives of every pair of the first groups, shortest first."""
    groups: dict[int, list[int]] = {}
    for i in range(X.shape[0]):
        groups.setdefault(uf.find(i), []).append(i)
    roots = sorted(groups)[:LINK_COMPONENTS]
    reps = {r: _representatives(groups[r], X) for r in roots}
    candidates = []
    for ai, a in enumerate(roots):
        for b in roots[ai + 1 :]:
            d = torch.cdist(X[reps[a]], X[reps[b]])
            k = int(torch.argmin(d))
            candidates.append((float(d.flatten()[k]), reps[a][k // d.shape[1]], reps[b][k % d.shape[1]]))
    candidates.sort()
    _join(uf, checker, [(i, j) for _, i, j in candidates])


def path_components(checker: PathChecker, X: torch.Tensor, near: float) -> list[list[int]]:
    """The groups of rows of ``X`` joined by paths that hold (near-duplicates closer than ``near``
    join without a check), each in row order, the groups in order of their first row."""
    uf = UnionFind(X.shape[0])
    _join_neighbours(uf, checker, X, near)
    _link_groups(uf, checker, X)
    groups: dict[int, list[int]] = {}
    for k in range(X.shape[0]):
        groups.setdefault(uf.find(k), []).append(k)
    return list(groups.values())
