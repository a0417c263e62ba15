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
   being 1-Lipschitz, is also bounded between them (:mod:`aeaudit.region_paths`). Findings closer than
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
from .region_paths import PathChecker, path_components

log = logging.getLogger(__name__)

NON_FINITE = "non-finite"
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
        checker = PathChecker(verifier, baseline, X, latents, dist)
        for component in path_components(checker, X, MERGE_FRACTION * baseline.scale):
            members = [nodes[k] for k in component]
            groups.append((members, _group_kind(members, ranked)))
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
