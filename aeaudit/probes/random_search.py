"""Random search: the baseline every strong search is compared against.

Draws random points of the input domain (for an unbounded domain: a Gaussian around the
normal data, widened) and, where the model has a latent split, decodes random latent codes
from the normal latents' box widened by ``latent_extent``. It keeps the draws that score below
the objective's operating threshold (loosened for verification), and draws whose score is NaN or inf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..findings import Candidates, loose_threshold
from .base import Probe, ProbeContext, ProbeResult, check_counts, check_positive
from .latent_space import decode_flat, latent_box


@dataclass(eq=False)
class RandomSearch(Probe):
    """Uniform random draws in the input domain and in the widened latent box.

    Args:
        samples: draws per space (input, latent).
        batch_size: draws evaluated per batch.
        latent_extent: widening of the normal latents' range (3 = three times as wide).
        max_candidates: the lowest-scoring draws kept for verification.
    """

    name: ClassVar[str] = "random"
    kind: ClassVar[str] = "search"
    effort_presets: ClassVar[dict] = {"quick": {"samples": 2048}, "thorough": {"samples": 16384}}

    samples: int = 4096
    batch_size: int = 1024
    latent_extent: float = 3.0
    max_candidates: int = 8192

    def __post_init__(self) -> None:
        check_counts(self, "samples", "batch_size", "max_candidates")
        check_positive(self, "latent_extent")

    def _lowest(
        self, xs: list[torch.Tensor], scores: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        x, s = torch.cat(xs), torch.cat(scores)
        if len(s) > self.max_candidates:
            best = torch.argsort(s, stable=True)[: self.max_candidates]
            x, s = x[best], s[best]
        return [x], [s]

    def _input_draw(self, ctx: ProbeContext, n: int, gen: torch.Generator) -> torch.Tensor:
        b = ctx.baseline
        shape = (n, *b.reference.shape[1:])
        if b.domain.bounded:
            u = torch.rand(shape, generator=gen, dtype=torch.float64)
            x = b.domain.low + (b.domain.high - b.domain.low) * u
        else:
            ref = b.reference.double().cpu()
            mean, std = ref.mean(dim=0), ref.std(dim=0).clamp_min(1e-6)
            x = mean + 3.0 * std * torch.randn(shape, generator=gen, dtype=torch.float64)
        return x.to(ctx.adapter.device, ctx.adapter.dtype)

    def _run(self, ctx: ProbeContext) -> ProbeResult:
        adapter, b = ctx.adapter, ctx.baseline
        gen = ctx.generator(salt=101)
        spaces = ["input"] + (["latent"] if adapter.has_latent and ctx.objective.name == "recon" else [])
        if "latent" in spaces:
            _, zlo, zhi = latent_box(ctx, self.latent_extent)
        keep_below = loose_threshold(ctx.objective.tau_op)
        kept_x, kept_s, odd_x, evaluations, stopped = [], [], [], 0, None
        with ctx.reporter.task("random search", total=self.samples * len(spaces)) as bar:
            for space in spaces:
                done = 0
                while done < self.samples and stopped is None:
                    if (stopped := ctx.stop.reason()) is not None:
                        break
                    n = min(self.batch_size, self.samples - done)
                    if space == "input":
                        x = self._input_draw(ctx, n, gen)
                    else:
                        u = torch.rand((n, zlo.numel()), generator=gen, dtype=torch.float64)
                        z = (zlo.double().cpu() + (zhi - zlo).double().cpu() * u).to(adapter.device, adapter.dtype)
                        with torch.no_grad():
                            x = decode_flat(ctx, z)
                    score = ctx.objective.evaluate(x)
                    keep = score <= keep_below
                    if keep.any():
                        kept_x.append(x[keep].cpu())
                        kept_s.append(score[keep].cpu())
                        if sum(len(k) for k in kept_s) > 2 * self.max_candidates:
                            kept_x, kept_s = self._lowest(kept_x, kept_s)
                    odd = ~torch.isfinite(score)
                    if odd.any() and sum(len(k) for k in odd_x) < self.max_candidates:
                        odd_x.append(x[odd].cpu())
                    done += n
                    evaluations += n
                    bar.advance(n)
        x_all = self._lowest(kept_x, kept_s)[0][0] if kept_x else torch.empty(0, *b.reference.shape[1:])
        cands = Candidates(
            x=torch.cat([x_all.to(b.reference.dtype), *[o.to(b.reference.dtype) for o in odd_x]]), probe=self.name
        )
        result = ProbeResult(self.name, self.kind, candidates=cands, evaluations=evaluations)
        return result.stopped(stopped) if stopped else result
