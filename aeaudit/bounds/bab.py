"""Branch and bound: prove that no point of a region reconstructs well, or show where it does.

The root box (the input domain box, or the latent box) is bisected into boxes. Each box, bounded
in batches (:func:`~aeaudit.bounds.propagate.bound_boxes`), ends in one of four states:

* **certified** — the loss lower bound over the whole box exceeds ``τ_op``: no point in it is a
  blind spot, near or far;
* **near** — one normal reference point lies within ``δ`` of every point of the box (input space:
  of the box; latent space: of an outer box of the decoded points), so the box is outside the
  region "≥ δ from the normal data";
* **falsified** — the box lies wholly ``≥ δ`` from the normal data and contains a point whose
  float64 loss is ``≤ τ_op`` and whose distance is ``≥ δ`` (found by :mod:`.falsify`, or an
  earlier one lying in it): a counterexample, an ordinary finding of kind ``counterexample``;
* otherwise it is split; whatever is still unsplit when the effort runs out is **unknown**.

Effort is counted in work, not seconds: ``max_boxes`` box evaluations, and ``pgd_starts × (1 +
pgd_steps)`` point evaluations per falsification attempt; the run is deterministic for a seed.
A ``deadline`` callable may stop it early; the result then says it was cut short.

Boxes are stored exactly as integers: per dimension a level ``ℓ`` and an index ``i``, the box
being ``[low + i·w·2^-ℓ, low + (i+1)·w·2^-ℓ]`` with ``w`` the root width. Both children of a
split share their boundary bit for bit, so the boxes tile the root box without gaps, and anyone
can re-check a certified box from ``(low, high, ℓ, i)``.

Order (``order``): ``"best"`` (default) bounds first the children of the boxes whose loss bound
came closest to ``τ_op``, first-in first-out among equals; ``"breadth"`` goes level by level. On
ODDS shuttle (9 features) best-first certified 93.9 % of the region in 60 s against 91.8 %.

Split rule (``split``): ``"smear"`` (default with CROWN) bisects the side with the largest
``width × Σ|coefficients of the residual bounds|``, the side that contributes most to the bound
gap; ``"widest"`` (and IBP) bisects the widest side relative to the root box. A side is never
split below ``2^-MAX_LEVEL`` of its root width.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .distance import ReferenceSet, far_lower_bound, near_boxes
from .falsify import Attempt, falsify, verify
from .network import Network
from .ops import DTYPE
from .propagate import bound_boxes, plan

MAX_LEVEL = 48
LIST_BOXES_MAX_DIM = 8
SPLITS = ("smear", "widest")
ORDERS = ("best", "breadth")
BUCKETS = 20  # "best" order: boxes queue by their parent's loss bound / τ_op in steps of 1/BUCKETS
STATES = ("certified", "near", "falsified", "unknown")
MAX_COUNTEREXAMPLES = 256
HISTORY_POINTS = 64
DEADLINE = "cut short by the deadline"


@dataclass
class Counterexample:
    """A verified point: ``inputs`` (the chain's input: data-space x, or the latent z), ``point``
    (data space), float64 ``loss`` and exact ``distance`` to the nearest reference row."""

    inputs: np.ndarray
    point: np.ndarray
    loss: float
    distance: float
    nearest_index: int

    def to_dict(self, space: str) -> dict:
        out = {
            "loss": self.loss,
            "distance": self.distance,
            "nearest_index": self.nearest_index,
            "x": self.point.tolist(),
        }
        if space == "latent":
            out["latent"] = self.inputs.tolist()
        return out


@dataclass
class Region:
    """What was examined: the root box of ``space`` and the thresholds."""

    space: str
    low: np.ndarray
    high: np.ndarray
    tau_op: float
    delta: float
    loss_kind: str
    description: str

    def to_dict(self) -> dict:
        far = (
            "inputs x in the box with min_i ||x - p_i|| >= delta"
            if self.space == "input"
            else "latent codes z in the box whose decoded input a = D(z) has min_i ||a - p_i|| >= delta"
        )
        return {
            "space": self.space,
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "tau_op": self.tau_op,
            "delta": self.delta,
            "loss": self.loss_kind,
            "region": far,
            "description": self.description,
        }


@dataclass
class CertifyResult:
    region: Region
    method: str
    bounds: str
    split: str
    shares: dict[str, float]
    counts: dict[str, int]
    evaluations: int
    pgd_points: int
    cut_short: bool
    stop_reason: str
    seconds: float
    boxes: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False)  # state -> (levels, indices)
    counterexamples: list[Counterexample] = field(default_factory=list)
    counterexamples_found: int = 0
    history: list[dict] = field(default_factory=list, repr=False)

    @property
    def certified_or_near(self) -> float:
        return self.shares["certified"] + self.shares["near"]

    @property
    def complete(self) -> bool:
        """Every part of the region is certified or near: the basis of a *certified PASS*."""
        return self.counts["unknown"] == 0 and self.counts["falsified"] == 0

    def box_bounds(self, state: str) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)`` arrays ``[N, d]`` of the boxes in ``state``, exactly as they were bounded."""
        levels, index = self.boxes[state]
        lo, hi = box_coordinates(
            torch.as_tensor(self.region.low),
            torch.as_tensor(self.region.high),
            torch.as_tensor(levels),
            torch.as_tensor(index),
        )
        return lo.numpy(), hi.numpy()

    def to_dict(self) -> dict:
        d = self.region.low.size
        out = {
            "region": self.region.to_dict(),
            "method": self.method,
            "bounds": self.bounds,
            "split": self.split,
            "shares": self.shares,
            "counts": self.counts,
            "evaluations": self.evaluations,
            "pgd_points": self.pgd_points,
            "cut_short": self.cut_short,
            "stop_reason": self.stop_reason,
            "seconds": round(self.seconds, 3),
            "certified_or_near": self.certified_or_near,
            "counterexamples_found": self.counterexamples_found,
            "counterexamples": [c.to_dict(self.region.space) for c in self.counterexamples],
            "history": _thin(self.history),
        }
        if d <= LIST_BOXES_MAX_DIM:
            out["boxes"] = {
                "encoding": "box = [low + index * (high - low) * 2^-level, low + (index + 1) * (high - low)"
                " * 2^-level] per dimension, float64",
                **{s: {"level": lv.tolist(), "index": ix.tolist()} for s, (lv, ix) in self.boxes.items()},
            }
        else:
            out["boxes"] = {
                "listed": False,
                "reason": f"{d} dimensions > {LIST_BOXES_MAX_DIM}: summary only",
                **{s: _depth_summary(lv) for s, (lv, _) in self.boxes.items()},
            }
        return out


def _thin(history: list[dict]) -> list[dict]:
    if len(history) <= HISTORY_POINTS:
        return history
    keep = np.unique(np.linspace(0, len(history) - 1, HISTORY_POINTS).round().astype(int))
    return [history[i] for i in keep]


def _depth_summary(levels: np.ndarray) -> dict:
    depth = levels.sum(axis=1) if len(levels) else np.zeros(0, dtype=int)
    values, counts = np.unique(depth, return_counts=True)
    return {"count": int(len(levels)), "splits_histogram": {int(v): int(c) for v, c in zip(values, counts)}}


def box_coordinates(
    low: torch.Tensor, high: torch.Tensor, levels: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 corners of boxes given by integer ``levels`` and ``index`` (``[N, d]``)."""
    low, high = low.to(DTYPE), high.to(DTYPE)
    side = torch.ldexp((high - low).expand(levels.shape), -levels.to(torch.int64))
    return low + index.to(DTYPE) * side, low + (index + 1).to(DTYPE) * side


def input_region(
    reference: torch.Tensor, low=None, high=None, widen: float = 2.0
) -> tuple[np.ndarray, np.ndarray, str]:
    """The input box to certify: the domain ``[low, high]`` when bounded, else the normal data's
    per-feature range widened ``widen``× about its centre. Returns ``(low, high, description)``."""
    ref = reference.detach().to("cpu", DTYPE).reshape(reference.shape[0], -1)
    n = ref.shape[1]
    if low is not None and high is not None:
        lo, hi = (
            np.broadcast_to(np.asarray(low, float), (n,)).copy(),
            np.broadcast_to(np.asarray(high, float), (n,)).copy(),
        )
        return lo, hi, "the input domain box"
    dmin, dmax = ref.min(dim=0).values.numpy(), ref.max(dim=0).values.numpy()
    centre, half = (dmin + dmax) / 2, np.maximum((dmax - dmin) / 2, 1e-6)
    return centre - widen * half, centre + widen * half, f"the normal data's per-feature range widened {widen:g}x"


def certify_input(
    network: Network,
    reference: torch.Tensor,
    low,
    high,
    *,
    tau_op: float,
    delta: float,
    description: str = "",
    **settings,
) -> CertifyResult:
    """Certify the input box ``[low, high]`` (data space, per feature) of ``network``
    (:func:`~aeaudit.bounds.network.input_network`). ``reference``: the normal reference points.
    ``settings``: see :func:`branch_and_bound`."""
    region = _region("input", network, low, high, tau_op, delta, description)
    return branch_and_bound(network, reference, region, **settings)


def certify_latent(
    network: Network,
    reference: torch.Tensor,
    latent_low,
    latent_high,
    *,
    tau_op: float,
    delta: float,
    description: str = "",
    **settings,
) -> CertifyResult:
    """Certify the latent box ``[latent_low, latent_high]`` of ``network``
    (:func:`~aeaudit.bounds.network.latent_network`): a code counts when its decode is ``≥ δ``
    from ``reference``. ``settings``: see :func:`branch_and_bound`."""
    region = _region("latent", network, latent_low, latent_high, tau_op, delta, description)
    return branch_and_bound(network, reference, region, **settings)


def _region(space: str, network: Network, low, high, tau_op, delta, description: str) -> Region:
    low, high = np.asarray(low, float).ravel(), np.asarray(high, float).ravel()
    return Region(space, low, high, float(tau_op), float(delta), network.loss_kind, description or network.description)


def branch_and_bound(
    network: Network,
    reference: torch.Tensor,
    region: Region,
    *,
    method: str = "crown",
    mode: str = "auto",
    split: str | None = None,
    order: str = "best",
    max_boxes: int = 20000,
    batch_size: int = 128,
    pgd_starts: int = 4,
    pgd_steps: int = 10,
    pgd_gate: float = 4.0,
    generator: torch.Generator | None = None,
    deadline: Callable[[], bool] | None = None,
    model_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seeds: torch.Tensor | None = None,
) -> CertifyResult:
    """Run branch and bound over ``region``; see the module docstring.

    ``method``: ``"crown"`` or ``"ibp"``; ``mode``: linear bound mode (``"auto"``, ``"backward"``,
    ``"forward"``); ``split``: ``"smear"`` or ``"widest"`` (default: smear with CROWN). ``max_boxes``:
    box evaluations; ``pgd_*``: falsification effort per box (``pgd_steps = 0``: evaluate the starts
    only). ``model_loss``: the model's own float64 loss of data-space points, required to agree
    before a counterexample counts. ``deadline()``: True when time is up. ``seeds``: chain inputs
    (data-space points, or latent codes) of blind spots found elsewhere, e.g. by the searches; those
    that verify here count as counterexamples from the start, so boxes holding them can be falsified."""
    split = split or ("smear" if method == "crown" else "widest")
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    if region.low.size != network.dim:
        raise ValueError(f"the box has {region.low.size} dimensions, the network takes {network.dim}")
    if order not in ORDERS:
        raise ValueError(f"order {order!r}: choose one of {', '.join(ORDERS)}")
    run = _Run(
        network,
        ReferenceSet(reference),
        region,
        method,
        mode,
        split,
        order,
        max_boxes,
        batch_size,
        (pgd_starts, pgd_steps, pgd_gate),
        generator or torch.Generator().manual_seed(0),
        deadline,
        model_loss,
    )
    if seeds is not None:
        run.seed(seeds)
    return run.go()


class _Run:
    def __init__(
        self, net, ref, region, method, mode, split, order, max_boxes, batch_size, pgd, generator, deadline, model_loss
    ):
        self.net, self.ref, self.region = net, ref, region
        self.method, self.mode, self.split, self.order = method, mode, split, order
        self.max_boxes, self.batch_size, self.pgd = max_boxes, max(1, batch_size), pgd
        self.generator, self.deadline, self.model_loss = generator, deadline, model_loss
        self.low, self.high = torch.as_tensor(region.low, dtype=DTYPE), torch.as_tensor(region.high, dtype=DTYPE)
        d = net.dim
        zero = torch.zeros(1, d, dtype=torch.int64)
        self.frontier = _Frontier(order)
        self.frontier.push(zero, zero.clone(), torch.zeros(1, dtype=DTYPE))
        self.done: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {s: [] for s in STATES[:3]}
        self.volume: dict[str, list[float]] = {s: [] for s in STATES[:3]}  # exact per-batch sums
        self.running = dict.fromkeys(STATES[:3], 0.0)  # for the history only
        self.cex: list[Counterexample] = []
        self.cex_found = 0
        self.cex_inputs = torch.empty(0, d, dtype=DTYPE)
        self.evaluations = self.pgd_points = 0
        self.history: list[dict] = []

    def seed(self, inputs: torch.Tensor) -> None:
        """Take verified points found elsewhere (inside the root box) as known counterexamples."""
        z = inputs.detach().to("cpu", DTYPE).reshape(inputs.shape[0], -1)
        z = z[((z >= self.low) & (z <= self.high)).all(dim=1)]
        if not len(z):
            return
        with torch.no_grad():
            loss, point = self.net.evaluate(z)
        r = self.region
        ok, dist, nearest = verify(self.ref, point, loss, tau_op=r.tau_op, delta=r.delta, model_loss=self.model_loss)
        self._record(Attempt(ok, z, point, loss, dist, nearest, len(z)))
        self.cex_inputs = torch.cat([self.cex_inputs, z[ok]])

    def go(self) -> CertifyResult:
        started = time.perf_counter()
        stop = ""
        while self.frontier:
            if self.evaluations >= self.max_boxes:
                stop = f"effort spent: {self.evaluations} box evaluations (max_boxes {self.max_boxes})"
                break
            if self.deadline is not None and self.deadline():
                stop = DEADLINE
                break
            self._step(*self.frontier.take(self.batch_size))
            self.history.append(
                {
                    "seconds": round(time.perf_counter() - started, 3),
                    "evaluations": self.evaluations,
                    **self.running,
                }
            )
        return self._result(stop, time.perf_counter() - started)

    def _step(self, levels: torch.Tensor, index: torch.Tensor) -> None:
        r = self.region
        lo, hi = box_coordinates(self.low, self.high, levels, index)
        b = bound_boxes(self.net, lo, hi, self.method, self.mode)
        self.evaluations += lo.shape[0]
        certified = b.loss_lower > r.tau_op
        near = torch.zeros_like(certified)
        open_ = torch.nonzero(~certified).flatten()
        near[open_] = near_boxes(self.ref, b.point_lo[open_], b.point_hi[open_], r.delta)
        rest = ~(certified | near)
        has_cex = rest & self._holds_counterexample(lo, hi)[0]
        geometric = rest.clone()  # boxes with a known low-loss point cannot be certified: split by geometry
        attempt = torch.nonzero(rest & ~has_cex).flatten()
        if attempt.numel():
            starts, steps, gate = self.pgd
            a = falsify(
                self.net,
                self.ref,
                lo[attempt],
                hi[attempt],
                tau_op=r.tau_op,
                delta=r.delta,
                starts=starts,
                steps=steps,
                gate=gate,
                generator=self.generator,
                model_loss=self.model_loss,
            )
            self.pgd_points += a.evaluations
            self._record(a)
            has_cex[attempt] = a.found
            self.cex_inputs = torch.cat([self.cex_inputs, a.inputs[a.found]])
            geometric[attempt] = a.low
        falsified = torch.zeros_like(certified)
        check = torch.nonzero(has_cex).flatten()
        if check.numel():  # a counterexample makes the box falsified once the whole box is far
            falsified[check] = far_lower_bound(self.ref, b.point_lo[check], b.point_hi[check]) >= r.delta
            if falsified.any():  # a point inside a finished box is in no open box: forget it
                self.cex_inputs = self.cex_inputs[~self._holds_counterexample(lo[falsified], hi[falsified])[1]]
        for state, mask in (("certified", certified), ("near", near), ("falsified", falsified)):
            if mask.any():
                self.done[state].append((levels[mask], index[mask]))
                self.volume[state].append(math.fsum(_volumes(levels[mask])))
                self.running[state] += self.volume[state][-1]
        todo = rest & ~falsified
        if todo.any():
            self._split(
                levels[todo],
                index[todo],
                None if b.sensitivity is None else b.sensitivity[todo],
                geometric[todo],
                b.loss_lower[todo] / r.tau_op,
            )

    def _holds_counterexample(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(box holds a stored counterexample [B], point lies in one of the boxes [C])``."""
        z = self.cex_inputs.unsqueeze(0)
        inside = ((z >= lo.unsqueeze(1)) & (z <= hi.unsqueeze(1))).all(dim=2)  # [B, C]
        return inside.any(dim=1), inside.any(dim=0)

    def _record(self, a) -> None:
        """Count the verified points; keep the ``MAX_COUNTEREXAMPLES`` with the lowest loss."""
        found = torch.nonzero(a.found).flatten().tolist()
        self.cex_found += len(found)
        for i in found:
            point = Counterexample(
                a.inputs[i].numpy(), a.points[i].numpy(), float(a.loss[i]), float(a.distance[i]), int(a.nearest[i])
            )
            self.cex.append(point)
        if len(self.cex) > 2 * MAX_COUNTEREXAMPLES:
            self.cex = sorted(self.cex, key=lambda c: c.loss)[:MAX_COUNTEREXAMPLES]

    def _split(
        self,
        levels: torch.Tensor,
        index: torch.Tensor,
        sensitivity: torch.Tensor | None,
        geometric: torch.Tensor,
        ratio: torch.Tensor,
    ) -> None:
        splittable = levels < MAX_LEVEL
        widest = torch.where(splittable, -levels.to(DTYPE), -torch.inf)  # normalised width 2^-level
        choice = widest.argmax(dim=1)
        if self.split == "smear" and sensitivity is not None:
            score = torch.where(splittable & torch.isfinite(sensitivity), sensitivity, -torch.inf)
            informative = (score.max(dim=1).values > 0) & ~geometric
            choice = torch.where(informative, score.argmax(dim=1), choice)
        can = splittable.any(dim=1)
        levels, index, choice, ratio = levels[can], index[can], choice[can], ratio[can]
        if (~can).any():  # every side at the resolution limit: stays unknown
            self.done.setdefault("unsplittable", []).append((levels[~can], index[~can]))
        rows = torch.arange(levels.shape[0])
        child_levels = levels.clone()
        child_levels[rows, choice] += 1
        left, right = index.clone(), index.clone()
        left[rows, choice] = 2 * index[rows, choice]
        right[rows, choice] = 2 * index[rows, choice] + 1
        both_levels = torch.stack([child_levels, child_levels], dim=1).reshape(-1, levels.shape[1])
        both_index = torch.stack([left, right], dim=1).reshape(-1, levels.shape[1])
        self.frontier.push(both_levels, both_index, ratio.repeat_interleave(2))

    def _share(self, state: str) -> float:
        return math.fsum(self.volume[state])

    def _result(self, stop: str, seconds: float) -> CertifyResult:
        r = self.region
        unknown = self.frontier.remaining() + self.done.pop("unsplittable", [])
        boxes = {s: _stack(self.done[s], self.net.dim) for s in STATES[:3]}
        boxes["unknown"] = _stack(unknown, self.net.dim)
        shares = {s: self._share(s) for s in STATES[:3]}
        shares["unknown"] = max(0.0, 1.0 - math.fsum(shares.values()))
        counts = {s: int(boxes[s][0].shape[0]) for s in STATES}
        cex = sorted(self.cex, key=lambda c: c.loss)[:MAX_COUNTEREXAMPLES]
        bounds = (
            "interval bound propagation"
            if self.method == "ibp"
            else ("linear relaxation (CROWN), " + plan(self.net, self.mode).describe())
        )
        if not stop and counts["unknown"]:
            stop = "boxes at the resolution limit remain"
        return CertifyResult(
            r,
            self.method,
            bounds,
            self.split,
            shares,
            counts,
            self.evaluations,
            self.pgd_points,
            stop == DEADLINE,
            stop or "complete",
            seconds,
            boxes,
            cex,
            self.cex_found,
            self.history,
        )


class _Frontier:
    """The boxes still to be bounded, as integer arrays, in queues by priority.

    ``"breadth"``: one first-in first-out queue, so whole levels go before finer ones. ``"best"``:
    one queue per bucket of the parent's ``loss bound / τ_op``; the highest bucket goes first (the
    boxes closest to being certified), first-in first-out within a bucket. In many dimensions
    breadth-first spends the effort evenly on boxes none of which can be certified yet; best-first
    certifies some volume early and leaves the hopeless boxes (straddling τ_op) for last."""

    def __init__(self, order: str):
        self.order = order
        self.queues: list[deque[tuple[torch.Tensor, torch.Tensor]]] = [deque() for _ in range(BUCKETS)]

    def __bool__(self) -> bool:
        return any(self.queues)

    def push(self, levels: torch.Tensor, index: torch.Tensor, ratio: torch.Tensor) -> None:
        if self.order == "breadth":
            self.queues[0].append((levels, index))
            return
        bucket = (ratio.nan_to_num(0.0).clamp(0.0, 1.0) * (BUCKETS - 1)).floor().to(torch.int64)
        for b in torch.unique(bucket).tolist():
            mask = bucket == b
            self.queues[b].append((levels[mask], index[mask]))

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        levels, index, count = [], [], 0
        for queue in reversed(self.queues):
            while queue and count < n:
                lv, ix = queue.popleft()
                room = n - count
                if lv.shape[0] > room:
                    queue.appendleft((lv[room:], ix[room:]))
                    lv, ix = lv[:room], ix[:room]
                levels.append(lv)
                index.append(ix)
                count += lv.shape[0]
        return torch.cat(levels), torch.cat(index)

    def remaining(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [pair for queue in self.queues for pair in queue]


def _volumes(levels: torch.Tensor) -> list[float]:
    return [math.ldexp(1.0, -int(s)) for s in levels.sum(dim=1).tolist()]


def _stack(pairs: list, d: int) -> tuple[np.ndarray, np.ndarray]:
    if not pairs:
        return np.zeros((0, d), dtype=np.int64), np.zeros((0, d), dtype=np.int64)
    return torch.cat([p[0] for p in pairs]).numpy(), torch.cat([p[1] for p in pairs]).numpy()
