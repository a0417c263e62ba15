"""Random search: the baseline every strong search is compared against.

Draws random points of the input domain (for an unbounded domain: a Gaussian around the
normal data, widened) and, where the model has a latent split, decodes random latent codes
from the normal latents' box widened by ``latent_extent``. It spends the same budget as the
other searches and keeps every draw that scores below the objective's operating threshold.
"""
from __future__ import annotations

import torch

from ..findings import Candidates
from .base import Probe, ProbeContext, ProbeResult
from .latent_space import decode_flat, latent_box


class RandomSearch(Probe):
    """Uniform random draws in the input domain and in the widened latent box.

    Args:
        samples: draws per space (input, latent); 0 = keep drawing until the budget runs out.
        batch_size: draws evaluated per batch.
        latent_extent: widening of the normal latents' range (3 = three times as wide).
        max_batches: cap on batches when ``samples`` is 0.
        max_candidates: the lowest-scoring draws kept for verification; bounds the work after
            the search, which the time budget does not cover.
    """

    name = "random"
    kind = "search"
    budget_weight = 0.5

    def __init__(self, samples: int = 4096, batch_size: int = 1024, latent_extent: float = 3.0, max_batches: int = 10_000,
                 max_candidates: int = 8192):
        self.samples = samples
        self.batch_size = batch_size
        self.latent_extent = latent_extent
        self.max_batches = max_batches
        self.max_candidates = max_candidates

    def _lowest(self, xs: list[torch.Tensor], scores: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        x, s = torch.cat(xs), torch.cat(scores)
        if len(s) > self.max_candidates:
            best = torch.argsort(s)[: self.max_candidates]
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
        per_space = self.samples if self.samples > 0 else self.batch_size * self.max_batches
        kept_x, kept_s, evaluations, status = [], [], 0, "complete"
        with ctx.reporter.task("random search", total=per_space * len(spaces)) as bar:
            for space in spaces:
                done = 0
                while done < per_space:
                    if ctx.budget.expired():
                        status = "incomplete"
                        break
                    n = min(self.batch_size, per_space - done)
                    if space == "input":
                        x = self._input_draw(ctx, n, gen)
                    else:
                        u = torch.rand((n, zlo.numel()), generator=gen, dtype=torch.float64)
                        z = (zlo.double().cpu() + (zhi - zlo).double().cpu() * u).to(adapter.device, adapter.dtype)
                        with torch.no_grad():
                            x = decode_flat(ctx, z)
                    score = ctx.objective.evaluate(x)
                    keep = score <= ctx.objective.tau_op * 1.5
                    if keep.any():
                        kept_x.append(x[keep].cpu())
                        kept_s.append(score[keep].cpu())
                        if sum(len(k) for k in kept_s) > 2 * self.max_candidates:
                            kept_x, kept_s = self._lowest(kept_x, kept_s)
                    done += n
                    evaluations += n
                    bar.advance(n)
        x_all = self._lowest(kept_x, kept_s)[0][0] if kept_x else torch.empty(0, *b.reference.shape[1:])
        cands = Candidates(x=x_all, probe=self.name)
        return ProbeResult(self.name, self.kind, status=status, candidates=cands, evaluations=evaluations,
                           reason="" if status == "complete" else "stopped by the time budget")
