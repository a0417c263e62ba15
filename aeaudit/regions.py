"""Blind regions: the verified findings grouped into the distinct low-loss sets they lie in.

A search keeps as many points as its effort allows, so the number of findings says little about
how many distinct ways the detector can be fooled. A *region* is a set of findings joined by
paths that the detector accepts all along, found far from the normal data. The rule, deterministic
for a given set of findings (no randomness, everything in rank order):

1. *Non-finite* findings (the loss is NaN or inf) form one region of their own.
2. An *affine* certificate (a linear autoencoder, Lemma 1 of "Autoencoders for anomaly detection
   are unreliable") makes the whole scan one *subspace* region: the loss of an affine model is a
   convex function of its input, so every finding lies in one convex low-loss set together with the
   certificate's blind subspace.
3. Otherwise findings are joined when the path between them holds: loss ≤ τ_op at every checked
   point, and at least ``min(s, δ)`` from every normal sample all along — outside the region a
   1-nearest-neighbour detector at the same false-positive rate calls normal, so that two pockets
   on opposite sides of the data do not merge through the data's own low-loss region. The path is
   the polyline through points of the straight segment between the two inputs or, when both came
   from latent codes, through decodes of the latent segment (the curve the latent map draws).
   Points are checked at most ``s/2`` apart (1 to ``PATH_POINTS_MAX`` per path); the distance,
   being 1-Lipschitz, is also bounded between them (:class:`_PathChecker`). Findings closer than
   ``0.25·s`` are near-duplicates and join without a check, as in merging.
   Candidate paths: each finding's ``NEIGHBOURS`` nearest findings (shortest first, joined
   union-find style so a path inside one region is never checked), then one path between the
   closest representatives of every pair of the first ``LINK_COMPONENTS`` groups. A far-field
   certificate's group is a *ray* region; any other group is a *latent pocket* when a member came
   from a latent code, else an *input-space pocket*.

A path that fails or is never checked leaves two regions apart: regions may be split more finely
than the truth, never merged without a verified path.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .baseline import Baseline
from .findings import MERGE_FRACTION, SEVERITY_RANK, Finding, Verifier, rank_key

log = logging.getLogger(__name__)

NON_FINITE = "non-finite"
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
KIND_WORDS = {
    "subspace": "subspace",
    "ray": "ray",
    "latent pocket": "latent pocket",
    "input pocket": "input-space pocket",
    NON_FINITE: "non-finite region",
}


@dataclass
class Region:
    """One blind region: its kind, its worst severity, its extent and one representative witness.

    ``witness`` is a copy of the farthest finding of the region's worst severity and keeps its
    arrays (merging and ranking drop those of findings beyond the top K). ``reach_ratio`` is how
    far, in units of s, the region is known to extend: its farthest witness, or its certificate's
    blind distance when that is farther (``inf`` when unbounded)."""

    id: int
    kind: str
    severity: str
    witness: Finding
    n_witnesses: int
    severity_counts: dict[str, int]
    distance_ratio_min: float
    distance_ratio_max: float
    loss_ratio_min: float
    probes: list[str]
    certificates: int = 0
    dimension: int | None = None
    reach_ratio: float = math.nan
    members: list[int] = field(default_factory=list, repr=False)  # indices into the grouped findings, best first

    @property
    def label(self) -> str:
        return f"R{self.id}"

    @property
    def unbounded(self) -> bool:
        return math.isinf(self.reach_ratio)

    def describe(self, severity: bool = True) -> str:
        """``critical subspace of dimension 2 reaching 2.98e4·s``, ``high latent pocket at 3.1–5·s``."""
        what = KIND_WORDS.get(self.kind, self.kind)
        what = f"{self.severity} {what}" if severity else what
        if self.kind == "subspace" and self.dimension:
            what += f" of dimension {self.dimension}"
        if self.kind in ("subspace", "ray"):
            return f"{what}, unbounded" if self.unbounded else f"{what} reaching {_ratio_text(self.reach_ratio)}·s"
        return f"{what} at {_span_text(self.distance_ratio_min, self.distance_ratio_max)}·s"

    def to_dict(self, with_arrays: bool = True) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "kind": self.kind,
            "severity": self.severity,
            "description": self.describe(),
            "summary": self.describe(severity=False),
            "witnesses": self.n_witnesses,
            "severity_counts": self.severity_counts,
            "distance_ratio_min": self.distance_ratio_min,
            "distance_ratio_max": self.distance_ratio_max,
            "loss_ratio_min": self.loss_ratio_min,
            "probes": self.probes,
            "certificates": self.certificates,
            "dimension": self.dimension,
            "unbounded": self.unbounded,
            "reach_ratio": self.reach_ratio,
            "witness": self.witness.to_dict(with_arrays),
        }


def _ratio_text(v: float) -> str:
    """A distance ratio for a sentence: ``3.1``, ``250``, ``2.98e4``."""
    if not math.isfinite(v):
        return "∞"
    if abs(v) >= 1e4:
        mantissa, exponent = f"{v:.2e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return f"{v:.2g}" if abs(v) < 10 else f"{v:.0f}"


def _span_text(lo: float, hi: float) -> str:
    a, b = _ratio_text(lo), _ratio_text(hi)
    return a if a == b else f"{a}–{b}"


def describe(regions: list[Region], n_witnesses: int, listed: int = 3) -> str:
    """The verdict's words: ``2 blind regions (1 critical subspace of dimension 2 reaching 2.98e4·s;
    1 high latent pocket at 3.1–5·s), 4717 witnesses``; beyond ``listed`` regions, counts per severity."""
    if not regions:
        return "no blind region"
    shown = regions if len(regions) <= listed + 1 else regions[:listed]
    parts = [f"1 {r.describe()}" for r in shown]
    rest = regions[len(shown) :]
    if rest:
        per = {s: sum(r.severity == s for r in rest) for s in SEVERITY_RANK}
        parts.append(f"{len(rest)} more: " + ", ".join(f"{n} {s}" for s, n in per.items() if n))
    noun = "blind region" if len(regions) == 1 else "blind regions"
    witnesses = "witness" if n_witnesses == 1 else "witnesses"
    return f"{len(regions)} {noun} ({'; '.join(parts)}), {n_witnesses} {witnesses}"


# ----------------------------------------------------------------------------- paths
class _UnionFind:
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


class _PathChecker:
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


def _join(uf: _UnionFind, checker: _PathChecker, pairs: list[tuple[int, int]]) -> None:
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


def _join_neighbours(uf: _UnionFind, checker: _PathChecker, X: torch.Tensor, near: float) -> None:
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


def _link_groups(uf: _UnionFind, checker: _PathChecker, X: torch.Tensor) -> None:
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


# ----------------------------------------------------------------------------- regions
def _region(members: list[int], findings: list[Finding], kind: str) -> Region:
    group = [findings[i] for i in members]
    worst = min(group, key=lambda f: SEVERITY_RANK.get(f.severity, 9)).severity
    witness = max((f for f in group if f.severity == worst), key=lambda f: f.distance_ratio)
    certs = [f for f in group if f.kind == "certificate"]
    farthest = max(f.distance_ratio for f in group)
    reach = max([farthest] + [_certified_reach(f) for f in certs])
    dims = [f.details.get("blind_dimension") for f in certs if f.details.get("blind_dimension")]
    kept = copy.copy(witness)
    kept.details = dict(witness.details)
    losses = [f.loss_ratio for f in group if math.isfinite(f.loss_ratio)]
    return Region(
        id=0,
        kind=kind,
        severity=worst,
        witness=kept,
        n_witnesses=len(group),
        severity_counts={s: sum(f.severity == s for f in group) for s in SEVERITY_RANK},
        distance_ratio_min=min(f.distance_ratio for f in group),
        distance_ratio_max=farthest,
        loss_ratio_min=min(losses) if losses else math.nan,
        probes=sorted({f.probe for f in group}),
        certificates=len(certs),
        dimension=max(dims) if dims else None,
        reach_ratio=reach,
        members=members,
    )


def _certified_reach(f: Finding) -> float:
    """How far a certificate's blind set is verified to reach, in units of s (``inf``: unbounded)."""
    if f.details.get("unbounded"):
        return math.inf
    return float(f.details.get("blind_distance_ratio", f.distance_ratio))


def _group_kind(members: list[int], findings: list[Finding]) -> str:
    group = [findings[i] for i in members]
    if any(f.kind == "certificate" and f.probe == "far-field" for f in group):
        return "ray"
    return "latent pocket" if any(f.latent is not None for f in group) else "input pocket"


def _region_key(r: Region) -> tuple:
    """Regions rank like findings: the worst severity first, then the farthest reach."""
    return (SEVERITY_RANK.get(r.severity, 9), -r.reach_ratio, -r.distance_ratio_max, r.members[0] if r.members else 0)


def group_regions(findings: list[Finding], verifier: Verifier, baseline: Baseline) -> tuple[list[Region], dict]:
    """Group verified findings into blind regions (rule in the module docstring), ranked and numbered
    from 1; each finding's ``details["region"]`` is set to its region's id. Runs on every verified
    finding, before merging drops arrays, so each region keeps its witness's input.

    Returns ``(regions, grouping)``: ``grouping`` says how many model evaluations the path checks
    took and whether they all ran (``complete``: false when ``MAX_PATH_EVALUATIONS`` left some unchecked)."""
    start = time.perf_counter()
    order = sorted(range(len(findings)), key=lambda i: (rank_key(findings[i]), i))
    ranked = [findings[i] for i in order]
    groups: list[tuple[list[int], str]] = []
    non_finite = [i for i, f in enumerate(ranked) if f.kind == NON_FINITE or not math.isfinite(f.loss)]
    if non_finite:
        groups.append((non_finite, NON_FINITE))
    rest = sorted(set(range(len(ranked))) - set(non_finite))
    no_input = [i for i in rest if ranked[i].x is None]
    groups += [([i], "input pocket") for i in no_input]
    nodes = [i for i in rest if ranked[i].x is not None]
    checker = None
    if any(ranked[i].kind == "certificate" and ranked[i].probe == "affine" for i in nodes):
        groups.append((nodes, "subspace"))
    elif nodes:
        X = torch.as_tensor(np.stack([np.asarray(ranked[i].x, dtype=np.float64).reshape(-1) for i in nodes]))
        latents = [
            torch.as_tensor(ranked[i].latent, dtype=torch.float64) if ranked[i].latent is not None else None
            for i in nodes
        ]
        dist = np.array([ranked[i].distance for i in nodes])
        checker = _PathChecker(verifier, baseline, X, latents, dist)
        uf = _UnionFind(len(nodes))
        _join_neighbours(uf, checker, X, MERGE_FRACTION * baseline.scale)
        _link_groups(uf, checker, X)
        by_root: dict[int, list[int]] = {}
        for k in range(len(nodes)):
            by_root.setdefault(uf.find(k), []).append(nodes[k])
        groups += [(members, _group_kind(members, ranked)) for members in by_root.values()]
    regions = sorted((_region(sorted(m), ranked, kind) for m, kind in groups), key=_region_key)
    for rid, region in enumerate(regions, start=1):
        region.id = rid
        region.members = [order[i] for i in region.members]
        region.witness.details["region"] = rid
        for i in region.members:
            findings[i].details["region"] = rid
    evaluations = checker.evaluations if checker is not None else 0
    complete = checker is None or not checker.stopped
    if not complete:
        log.warning(
            "region grouping stopped after %d path evaluations; some regions may be split further than they are",
            evaluations,
        )
    log.info(
        "%d findings grouped into %d region(s) in %.2f s (%d path evaluations)",
        len(findings),
        len(regions),
        time.perf_counter() - start,
        evaluations,
    )
    return regions, {"path_evaluations": evaluations, "complete": complete}
