"""Certify: prove that no input in a stated region reconstructs well, or show where one does.

Branch and bound over boxes (:mod:`aeaudit.bounds`): a box whose float64 lower bound on the loss
exceeds ``τ_op`` is *certified*; a box wholly within ``δ`` of one normal sample is *near* (outside
the region); a box wholly ``≥ δ`` away that holds a verified low-loss point is *falsified* (the
point becomes a finding of kind ``counterexample``); the rest is *unknown* when the box budget runs
out. Two regions, each examined when its dimension allows:

* **input space** — the domain box (``--bounds``), or for unbounded data the normal data's per-feature
  range widened ``widen``× about its centre, minus the part within ``δ`` of the normal data;
* **latent map** — the latent box the grid search covers (normal latents' range widened
  ``latent_extent``×); a code counts when its decode lies ``≥ δ`` from the normal data.

A region that ends 100 % certified-or-near is proven free of blind spots; a PASS whose examined
regions all are is a *certified PASS* (:mod:`aeaudit.verdict`). The verified findings of the
searches that ran before this check seed the branch and bound, so their boxes are falsified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..bounds import (
    CannotBound,
    certify_input,
    certify_latent,
    input_network_for,
    input_region,
    latent_network_for,
    model_loss_for,
)
from ..findings import Candidates
from .analytic import float64_verifier
from .base import Probe, ProbeContext, ProbeResult, check_counts, check_positive, require
from .latent_space import latent_box

SPACES = ("auto", "input", "latent")
PLANE_NORMALS = 2000  # normal samples kept with a 2-D input region, for the report's picture of it
CHECK_POINTS = 256  # normal samples each bounded chain is checked against before it is trusted


@dataclass(eq=False)
class Certify(Probe):
    """Float64 interval and linear-relaxation bounds with branch and bound.

    Args:
        space: ``auto`` (every region whose dimension allows), ``input`` or ``latent``.
        max_boxes: box evaluations per region (the work; what is left is *unknown*).
        max_input_features: largest input size examined in input space.
        max_latent_dims: largest latent size examined.
        widen: an unbounded input region is the normal data's range widened this many times.
        latent_extent: widening of the normal latents' range (3 = three times as wide).
        method: ``crown`` (linear relaxation) or ``ibp`` (intervals only).
        pgd_starts, pgd_steps: the falsification effort per box.
    """

    name: ClassVar[str] = "certify"
    kind: ClassVar[str] = "analytic"
    supports_objective: ClassVar[bool] = False
    needs_gradients: ClassVar[bool] = True
    effort_presets: ClassVar[dict] = {"quick": {"max_boxes": 1000}, "thorough": {"max_boxes": 50_000}}

    space: str = "auto"
    max_boxes: int = 4000
    max_input_features: int = 16
    max_latent_dims: int = 8
    widen: float = 3.0
    latent_extent: float = 3.0
    method: str = "crown"
    pgd_starts: int = 4
    pgd_steps: int = 10

    def __post_init__(self) -> None:
        require(self.space in SPACES, self.name, f"space {self.space!r}: choose {', '.join(SPACES)}")
        require(self.method in ("crown", "ibp"), self.name, f"method {self.method!r}: choose crown or ibp")
        check_counts(self, "max_boxes", "max_input_features", "max_latent_dims", "pgd_starts")
        check_counts(self, "pgd_steps", minimum=0)
        check_positive(self, "widen", "latent_extent")

    def _settings(self, ctx: ProbeContext, salt: int) -> dict:
        return {
            "method": self.method,
            "max_boxes": self.max_boxes,
            "pgd_starts": self.pgd_starts,
            "pgd_steps": self.pgd_steps,
            "generator": ctx.generator(salt=salt),
            "deadline": ctx.stop.reached,
        }

    def _spaces(self, ctx: ProbeContext) -> tuple[list[str], dict[str, str]]:
        """The regions to examine, and why the others are not."""
        adapter, wanted = ctx.adapter, {"auto": ("input", "latent")}.get(self.space, (self.space,))
        todo, skipped = [], {}
        if "input" in wanted:
            if adapter.n_features > self.max_input_features:
                skipped["input"] = f"{adapter.n_features} input features > max_input_features {self.max_input_features}"
            else:
                todo.append("input")
        if "latent" in wanted:
            if not adapter.has_latent:
                skipped["latent"] = f"no latent map: {adapter.split_reason}"
            elif math.prod(adapter.latent_shape) > self.max_latent_dims:
                skipped["latent"] = (
                    f"{math.prod(adapter.latent_shape)} latent dimensions > max_latent_dims {self.max_latent_dims}"
                )
            else:
                todo.append("latent")
        return todo, skipped

    def _run(self, ctx: ProbeContext) -> ProbeResult:
        todo, skipped = self._spaces(ctx)
        if not todo:
            return ProbeResult(self.name, self.kind, status="skipped", reason="; ".join(skipped.values()))
        b, a64 = ctx.baseline, float64_verifier(ctx).adapter
        normal = b.normal.detach().to("cpu", torch.float64)
        artifacts: dict = {"skipped": skipped}
        found, evaluations, stopped = [], 0, None
        with ctx.reporter.task("certify", total=len(todo)) as bar:
            for i, space in enumerate(todo):
                try:
                    result, cands = self._certify(ctx, space, a64, normal, 31 + i)
                except CannotBound as exc:
                    skipped[space] = f"cannot bound: {exc}"
                    continue
                artifacts[space] = result.to_dict()
                if space == "input" and ctx.adapter.n_features == 2:
                    pick = torch.randperm(len(normal), generator=ctx.generator(salt=37))[:PLANE_NORMALS].sort().values
                    artifacts[space]["normal"] = normal.reshape(len(normal), 2)[pick].numpy().round(6).tolist()
                evaluations += result.evaluations + result.pgd_points
                found.append(cands)
                if result.cut_short:
                    stopped = ctx.stop.reason() or result.stop_reason
                bar.advance(1)
        examined = [s for s in todo if s in artifacts]
        if not examined:
            return ProbeResult(
                self.name, self.kind, status="skipped", reason="; ".join(skipped.values()), artifacts=artifacts
            )
        artifacts["certified"] = {
            s: bool(artifacts[s]["counts"]["unknown"] == 0 and artifacts[s]["counts"]["falsified"] == 0)
            for s in examined
        }
        candidates = _merge(found, b.reference.shape[1:])
        result = ProbeResult(
            self.name,
            self.kind,
            reason=_summary(artifacts, examined, skipped),
            candidates=candidates,
            evaluations=evaluations,
            artifacts=artifacts,
        )
        return result.stopped(stopped) if stopped else result

    def _certify(self, ctx: ProbeContext, space: str, a64, normal: torch.Tensor, salt: int):
        b, shape = ctx.baseline, tuple(ctx.adapter.input_shape)
        seeds = ctx.seeds
        if space == "input":
            net = input_network_for(a64, normal[:CHECK_POINTS])
            low, high, description = input_region(normal, b.domain.low, b.domain.high, widen=self.widen)
            result = certify_input(
                net,
                normal,
                low,
                high,
                tau_op=b.tau_op,
                delta=b.min_distance,
                description=description,
                model_loss=model_loss_for(a64),
                seeds=None if seeds is None else seeds.reshape(len(seeds), -1).double(),
                **self._settings(ctx, salt),
            )
            x = torch.as_tensor(np.array([c.point for c in result.counterexamples]), dtype=torch.float64)
            return result, Candidates(x=x.reshape(-1, *shape), probe=self.name, kind="counterexample")
        z, lo, hi = latent_box(ctx, self.latent_extent)
        net = latent_network_for(a64, z[:CHECK_POINTS].double().cpu(), b.domain)
        latent_seeds = ctx.latent_seeds
        result = certify_latent(
            net,
            normal,
            lo.double().cpu().numpy(),
            hi.double().cpu().numpy(),
            tau_op=b.tau_op,
            delta=b.min_distance,
            description=f"the latent box (normal latents' range widened {self.latent_extent:g}x)",
            model_loss=model_loss_for(a64),
            seeds=latent_seeds,
            **self._settings(ctx, salt),
        )
        x = torch.as_tensor(np.array([c.point for c in result.counterexamples]), dtype=torch.float64).reshape(
            -1, *shape
        )
        zz = torch.as_tensor(np.array([c.inputs for c in result.counterexamples]), dtype=torch.float64)
        latent = zz.reshape(len(x), -1) if len(x) else None
        return result, Candidates(x=x, probe=self.name, kind="counterexample", latent=latent)


def _merge(parts: list[Candidates], shape) -> Candidates:
    """One candidate set (latent codes dropped when only some parts carry them)."""
    xs = [p.x for p in parts if len(p)]
    if not xs:
        return Candidates(x=torch.empty(0, *shape, dtype=torch.float64), probe=Certify.name, kind="counterexample")
    if len(xs) == 1:
        return next(p for p in parts if len(p))
    return Candidates(x=torch.cat(xs), probe=Certify.name, kind="counterexample")


def _summary(artifacts: dict, examined: list[str], skipped: dict[str, str]) -> str:
    parts = []
    for space in examined:
        shares = artifacts[space]["shares"]
        words = (
            "proven free of blind spots"
            if artifacts["certified"][space]
            else (
                f"{100 * shares['certified']:.3g} % certified, {100 * shares['near']:.3g} % near, "
                f"{100 * shares['falsified']:.3g} % falsified, {100 * shares['unknown']:.3g} % unknown"
            )
        )
        parts.append(f"{space} region: {words}")
    parts += [f"{space} region not examined: {why}" for space, why in skipped.items()]
    return "; ".join(parts)
