"""Projected gradient descent (Madry et al., 2017) for blind spots, in latent and in input space.

"Autoencoders for anomaly detection are unreliable" proposes PGD for latent spaces too large
for the Figure 2 grid. A batch of starts is optimised together (samples are independent, so
one backward pass serves the whole batch):

* **lowest score, far away**: minimise the objective ``S(a)`` subject to ``d(a) ≥ δ``;
* **farthest, still normal-looking**: maximise ``d(a)`` subject to ``S(a) ≤ τ_op`` — the walk
  outward that measures how far the low-score region reaches (an unbounded blind ray keeps going).

Constraints are handled by an augmented Lagrangian with one multiplier per start; after every
step the iterate is projected back onto the feasible set (the input domain, or the latent box).
Each start keeps its best feasible point; ``restarts`` draw fresh starts; the number of starts and
steps is the probe's work, fixed by its settings (``--effort``). The objective comes
from the context (reconstruction loss, or a scorer's score for an adaptive search), and
distances are exact nearest-reference distances (one matrix product per step; see ``geometry.py``).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..findings import Candidates
from .base import Probe, ProbeContext, ProbeResult, check_counts, check_positive, require
from .latent_space import decode_flat, latent_box

OPTIMIZERS = ("adam", "sign")
MIN_GAIN = 1e-4  # an improvement smaller than this (normalised units) does not reset the patience
# Between full nearest-neighbour passes a step measures distances to each start's SHORTLIST nearest
# references only: a step moves a point little, so its nearest reference stays among them, and the
# per-step cost no longer grows with the reference set. Every kept point is re-measured exactly.
SHORTLIST, SHORTLIST_REFRESH = 16, 8
MAX_NONFINITE = 64  # inputs whose score came out NaN/inf, kept per round for verification


@dataclass
class Space:
    """Where the search moves: ``point = centre + half · u`` with ``u`` the optimised variable,
    ``bounded`` when ``u`` is kept in ``[−1, 1]``; ``to_input`` maps points to model inputs."""

    centre: torch.Tensor
    half: torch.Tensor
    bounded: bool
    to_input: Callable[[torch.Tensor], torch.Tensor]

    def point(self, u: torch.Tensor) -> torch.Tensor:
        return self.centre + self.half * u

    def coords(self, point: torch.Tensor) -> torch.Tensor:
        u = (point - self.centre) / self.half
        return u.clamp(-1.0, 1.0) if self.bounded else u


@dataclass
class Track:
    """Each start's best point so far: feasible beats infeasible; then a lower ``value`` (the
    objective when feasible, the constraint violation when not) wins."""

    feasible: torch.Tensor
    value: torch.Tensor
    x: torch.Tensor
    z: torch.Tensor | None
    score: torch.Tensor
    dist: torch.Tensor

    @classmethod
    def empty(cls, n: int, like: torch.Tensor, sample_shape: tuple, latent_dim: int | None) -> Track:
        return cls(
            feasible=torch.zeros(n, dtype=torch.bool, device=like.device),
            value=torch.full((n,), math.inf, dtype=like.dtype, device=like.device),
            x=like.new_zeros(n, *sample_shape),
            z=like.new_zeros(n, latent_dim) if latent_dim else None,
            score=like.new_full((n,), math.nan),
            dist=like.new_zeros(n),
        )

    def update(self, feasible, value, x, z, score, dist) -> torch.Tensor:
        """Keep the better of old and new per start; returns which starts improved."""
        gain = (value < self.value - MIN_GAIN) & (feasible == self.feasible)
        better = (feasible & ~self.feasible & torch.isfinite(value)) | gain
        self.feasible, self.value = torch.where(better, feasible, self.feasible), torch.where(better, value, self.value)
        self.x[better], self.score[better], self.dist[better] = x[better], score[better], dist[better]
        if z is not None:
            self.z[better] = z[better]
        return better


@dataclass(eq=False)
class PGDSearch(Probe):
    """The shared PGD engine; a subclass says which space it moves in and where it starts.

    Args:
        steps: gradient steps per round of starts (per mode).
        starts: starts of the "lowest score, far away" mode, optimised together in one batch.
        restarts: further rounds with fresh starts (each start keeps its own best).
        step_size: step in units of the space's half-range per coordinate (input domain or latent box).
        optimizer: ``adam`` or ``sign`` (the signed gradient of Madry et al.).
        patience: a round ends when no start has improved for this many steps.
        rho: augmented-Lagrangian penalty weight (objective and constraint are both normalised).
        margin: the search aims this far inside each constraint (a fraction of δ or of τ_op) so
            that float64 re-verification does not land just short of it.
        farthest_starts: starts of the outward walk ("farthest, still normal-looking"; 0 = skip it).
        latent_extent: widening of the normal latents' range (3 = three times as wide).
    """

    kind: ClassVar[str] = "search"
    needs_gradients: ClassVar[bool] = True
    space_name: ClassVar[str] = "input"
    salt: ClassVar[int] = 0
    effort_presets: ClassVar[dict] = {
        "quick": {"starts": 16, "steps": 60, "farthest_starts": 8},
        "thorough": {"starts": 128, "steps": 300, "restarts": 1, "farthest_starts": 32},
    }

    steps: int = 150
    starts: int = 32
    restarts: int = 0
    step_size: float = 0.05
    optimizer: str = "adam"
    patience: int = 30
    rho: float = 10.0
    margin: float = 0.05
    farthest_starts: int = 16
    latent_extent: float = 3.0

    def __post_init__(self) -> None:
        check_counts(self, "steps", "starts", "patience")
        check_counts(self, "restarts", "farthest_starts", minimum=0)
        check_positive(self, "step_size", "rho", "latent_extent")
        require(
            isinstance(self.margin, (int, float)) and 0 <= self.margin < 1,
            self.name,
            f"margin = {self.margin!r} must lie in [0, 1)",
        )
        require(
            self.optimizer in OPTIMIZERS,
            self.name,
            f"optimizer {self.optimizer!r} is unknown; choose {' or '.join(OPTIMIZERS)}",
        )

    def skip_reason(self, ctx: ProbeContext) -> str | None:
        if not ctx.objective.differentiable:
            return f"the objective {ctx.objective.name!r} is not differentiable"
        return super().skip_reason(ctx)

    @abstractmethod
    def _space(self, ctx: ProbeContext) -> Space:
        """The space the search moves in."""

    @abstractmethod
    def _starts(self, ctx: ProbeContext, space: Space, n: int, gen: torch.Generator) -> torch.Tensor:
        """``n`` starting points ``[n, D]`` of the space (float64 on the CPU, drawn from ``gen``)."""

    def _round(
        self, ctx: ProbeContext, space: Space, u0: torch.Tensor, mode: str, bar
    ) -> tuple[Track, int, str | None, torch.Tensor]:
        """One batch of starts. Returns ``(track, steps run, why it stopped early or None, inputs
        whose score was not finite)``."""
        obj, b = ctx.objective, ctx.baseline
        spread = max(abs(obj.tau_op), obj.tau_op - obj.tau_min, 1e-12)
        delta = max(b.min_distance, 1e-12)
        u = u0.clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=self.step_size) if self.optimizer == "adam" else None
        lam = torch.zeros_like(u0[:, 0])
        latent = self.space_name == "latent"
        track = Track.empty(u0.shape[0], u0, tuple(b.reference.shape[1:]), u0.shape[1] if latent else None)
        last_gain, odd = 0, []
        for step in range(self.steps):
            if (stopped := ctx.stop.reason()) is not None:
                return self._exact(track, b), step, stopped, _stack(odd, _sample_shape(b))
            bar.advance(1)
            v = space.point(u)
            a = space.to_input(v)
            score = obj.score(a)
            if len(odd) < MAX_NONFINITE and not bool(torch.isfinite(score).all()):
                odd.append(a.detach()[~torch.isfinite(score.detach())].cpu())
            if step % SHORTLIST_REFRESH == 0:
                shortlist = b.neighbours.shortlist(a, SHORTLIST)
            dist = b.neighbours.nearest_among(a, shortlist)
            if mode == "lowest":  # minimise the score while d ≥ δ
                primary, violation = (score - obj.tau_op) / spread, 1.0 - dist / delta
            else:  # maximise the distance while S ≤ τ_op
                primary, violation = -dist / delta, (score - obj.tau_op) / spread
            ok = torch.isfinite(primary) & torch.isfinite(violation)
            with torch.no_grad():
                feasible = violation <= 0
                value = torch.where(feasible, primary, violation)
                if bool(
                    track.update(
                        feasible, value, a.detach(), v.detach() if latent else None, score.detach(), dist.detach()
                    ).any()
                ):
                    last_gain = step
                elif step - last_gain >= self.patience:
                    bar.advance(self.steps - step - 1)
                    return self._exact(track, b), step + 1, None, _stack(odd, _sample_shape(b))
            aim = violation + self.margin
            lagrangian = primary + (self.rho / 2) * torch.relu(aim + lam / self.rho).pow(2)
            (grad,) = torch.autograd.grad(torch.where(ok, lagrangian, torch.zeros_like(lagrangian)).sum(), u)
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)  # e.g. a start exactly on a reference point
            with torch.no_grad():
                if opt is not None:
                    u.grad = grad
                    opt.step()
                else:
                    u -= self.step_size * grad.sign()
                if space.bounded:
                    u.clamp_(-1.0, 1.0)
                lam = torch.where(ok, torch.relu(lam + self.rho * aim.detach()), lam)
        return self._exact(track, b), self.steps, None, _stack(odd, _sample_shape(b))

    @staticmethod
    def _exact(track: Track, baseline) -> Track:
        """The kept points' distances measured against the whole reference set (steps used shortlists)."""
        with torch.no_grad():
            track.dist = baseline.neighbours.query(track.x, refine=1)[0].to(track.dist.dtype)
        return track

    def _run(self, ctx: ProbeContext) -> ProbeResult:
        adapter = ctx.adapter
        space = self._space(ctx)
        gen = ctx.generator(salt=self.salt)
        rounds = 1 + self.restarts
        modes = [("lowest", self.starts)] + ([("farthest", self.farthest_starts)] if self.farthest_starts else [])
        xs, zs, odd, stats, stopped, evaluations = [], [], [], {}, None, 0
        with ctx.reporter.task(f"PGD ({self.space_name})", total=rounds * self.steps * len(modes)) as bar:
            for mode, n_starts in modes:
                scores, dists, steps_run = [], [], 0
                for _ in range(rounds):
                    u0 = space.coords(self._starts(ctx, space, n_starts, gen).to(adapter.device, adapter.dtype))
                    track, done, stopped, bad = self._round(ctx, space, u0, mode, bar)
                    steps_run += done
                    evaluations += done * n_starts
                    xs.append(track.x[track.feasible].cpu())
                    if track.z is not None:
                        zs.append(track.z[track.feasible].cpu())
                    odd.append(bad)
                    scores.append(track.score[track.feasible].cpu())
                    dists.append(track.dist[track.feasible].cpu())
                    if stopped:
                        break
                stats[mode] = self._summary(ctx, mode, torch.cat(scores).double(), torch.cat(dists).double())
                stats[mode].update(starts=rounds * n_starts, steps=steps_run)
                if stopped:
                    break
        found = Candidates(x=torch.cat(xs), probe=self.name, latent=torch.cat(zs) if zs else None)
        odd_x = torch.cat(odd).to(found.x.dtype)
        if len(odd_x):  # NaN/inf scores carry no latent: verified as their own kind, no latent kept
            found = Candidates(x=torch.cat([found.x, odd_x]), probe=self.name)
        result = ProbeResult(
            self.name,
            self.kind,
            candidates=found,
            evaluations=evaluations,
            artifacts={"space": self.space_name, "optimizer": self.optimizer, **stats},
        )
        return result.stopped(stopped) if stopped else result

    @staticmethod
    def _summary(ctx: ProbeContext, mode: str, score: torch.Tensor, dist: torch.Tensor) -> dict:
        """What one mode reached (screened in the model's dtype; findings are verified later).
        ``lowest``: the lowest score among far points; ``farthest``: the farthest point whose
        score stays ≤ τ_op."""
        out = {"feasible": int(score.numel())}
        if score.numel() == 0:
            return out
        i = int(torch.argmin(score)) if mode == "lowest" else int(torch.argmax(dist))
        out.update(
            {
                "score": float(score[i]),
                "distance": float(dist[i]),
                "distance_ratio": float(dist[i]) / ctx.baseline.scale,
                "median_distance_ratio": float(dist.median()) / ctx.baseline.scale,
            }
        )
        return out


@dataclass(eq=False)
class LatentPGD(PGDSearch):
    """PGD over latent codes ``z`` in the widened latent box; the candidate is ``h(z)``."""

    name: ClassVar[str] = "pgd-latent"
    needs_latent: ClassVar[bool] = True
    space_name: ClassVar[str] = "latent"
    salt: ClassVar[int] = 301

    def _space(self, ctx: ProbeContext) -> Space:
        _, lo, hi = latent_box(ctx, self.latent_extent)
        return Space(centre=(lo + hi) / 2, half=(hi - lo) / 2, bounded=True, to_input=lambda z: decode_flat(ctx, z))

    def _starts(self, ctx: ProbeContext, space: Space, n: int, gen: torch.Generator) -> torch.Tensor:
        """Half the latents of held-out normal samples, half uniform points of the latent box."""
        held = ctx.baseline.heldout
        pick = torch.randint(0, held.shape[0], (n // 2,), generator=gen).to(held.device)
        with torch.no_grad():
            z_normal = ctx.adapter.encode(held[pick]).reshape(n // 2, -1).double().cpu()
        u = torch.rand(n - n // 2, space.centre.numel(), generator=gen, dtype=torch.float64) * 2 - 1
        return torch.cat([z_normal, space.centre.double().cpu() + space.half.double().cpu() * u])


@dataclass(eq=False)
class InputPGD(PGDSearch):
    """PGD over inputs ``x`` in the input domain (unbounded: in units of the normal data's spread)."""

    name: ClassVar[str] = "pgd-input"
    space_name: ClassVar[str] = "input"
    salt: ClassVar[int] = 401

    def _space(self, ctx: ProbeContext) -> Space:
        b = ctx.baseline
        ref = b.reference.reshape(b.reference.shape[0], -1)
        shape = tuple(b.reference.shape[1:])
        if b.domain.bounded:
            centre = torch.full_like(ref[0], (b.domain.low + b.domain.high) / 2)
            half = torch.full_like(ref[0], (b.domain.high - b.domain.low) / 2)
        else:
            centre, half = ref.mean(dim=0), ref.std(dim=0).clamp_min(1e-6 * float(ref.std().clamp_min(1e-12)))
        return Space(
            centre=centre, half=half, bounded=b.domain.bounded, to_input=lambda x: x.reshape(x.shape[0], *shape)
        )

    def _starts(self, ctx: ProbeContext, space: Space, n: int, gen: torch.Generator) -> torch.Tensor:
        """A third held-out normal samples, a third random points (uniform in a bounded domain,
        else Gaussian three spreads wide), a third decodes of random latent-box points (random
        points instead when the model has no latent split)."""
        b, adapter = ctx.baseline, ctx.adapter
        held = b.heldout.reshape(b.heldout.shape[0], -1)
        n_normal = n // 3
        n_decoded = n // 3 if adapter.has_latent else 0
        n_random = n - n_normal - n_decoded
        pick = torch.randint(0, held.shape[0], (n_normal,), generator=gen).to(held.device)
        shape = (n_random, space.centre.numel())
        u = (
            torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
            if b.domain.bounded
            else 3 * torch.randn(shape, generator=gen, dtype=torch.float64)
        )
        parts = [held[pick].double().cpu(), space.centre.double().cpu() + space.half.double().cpu() * u]
        if n_decoded:
            _, lo, hi = latent_box(ctx, self.latent_extent)
            w = torch.rand(n_decoded, lo.numel(), generator=gen, dtype=torch.float64)
            z = (lo.double().cpu() + (hi - lo).double().cpu() * w).to(adapter.device, adapter.dtype)
            with torch.no_grad():
                parts.append(decode_flat(ctx, z).reshape(n_decoded, -1).double().cpu())
        return torch.cat(parts)


def _sample_shape(baseline) -> tuple[int, ...]:
    return tuple(baseline.reference.shape[1:])


def _stack(parts: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    return torch.cat(parts)[:MAX_NONFINITE] if parts else torch.empty(0, *shape)
