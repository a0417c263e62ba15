"""The shared base of every check and search (one subclass per file, as in torchattacks).

A probe stores its settings in ``__init__`` and does its work in ``run(ctx)``. Search probes
return :class:`~aeaudit.findings.Candidates`, which the audit screens and re-verifies in
float64; analytic probes build and verify their own certificate findings. What a probe
needs from the audit comes in one :class:`ProbeContext`.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..baseline import Baseline
from ..budget import Budget
from ..findings import Candidates, Finding, Verifier, evaluate_score
from ..model.adapter import AutoencoderAdapter
from ..progress import SILENT, Reporter

log = logging.getLogger(__name__)


@dataclass
class Objective:
    """What a search minimises: a per-sample score (differentiable when ``differentiable``)
    with its thresholds. The default objective is the reconstruction loss with ``τ_min``/``τ_op``;
    adaptive searches against a scorer pass that scorer's score and calibrated threshold."""

    name: str
    score: Callable[[torch.Tensor], torch.Tensor]
    tau_min: float
    tau_op: float
    differentiable: bool = True

    def evaluate(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Scores of ``x`` without a graph kept. Runs with autograd enabled, because some scores
        (GradCon) take gradients internally."""
        return evaluate_score(self.score, x, batch_size)



@dataclass
class ProbeContext:
    adapter: AutoencoderAdapter
    baseline: Baseline
    objective: Objective
    budget: Budget
    seed: int = 0
    reporter: Reporter = SILENT
    verifier: Verifier | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def generator(self, salt: int = 0) -> torch.Generator:
        """A seeded generator on the CPU (draw there, then move: identical across devices)."""
        g = torch.Generator(device="cpu")
        g.manual_seed(self.seed * 1_000_003 + salt)
        return g


@dataclass
class ProbeResult:
    """What one probe did. ``status``: ``complete``, ``incomplete`` (budget), ``skipped``, ``error``."""

    probe: str
    kind: str
    status: str = "complete"
    reason: str = ""
    candidates: Candidates | None = None
    findings: list[Finding] = field(default_factory=list)
    evaluations: int = 0
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"probe": self.probe, "kind": self.kind, "status": self.status, "reason": self.reason,
                "evaluations": self.evaluations, "seconds": round(self.seconds, 3), "params": self.params,
                "candidates": len(self.candidates) if self.candidates is not None else 0}


class Probe(ABC):
    """Base class. Subclasses set ``name``, ``kind`` (``"search"`` or ``"analytic"``),
    ``needs_latent`` and ``budget_weight`` (its share of the scan budget), and implement ``_run``."""

    name: str = "probe"
    kind: str = "search"
    needs_latent: bool = False
    budget_weight: float = 1.0
    supports_objective: bool = True  # False: only meaningful for the reconstruction loss

    def params(self) -> dict[str, Any]:
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self" and hasattr(self, k)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"

    def skip_reason(self, ctx: ProbeContext) -> str | None:
        if self.needs_latent and not ctx.adapter.has_latent:
            return f"needs an encoder/decoder split: {ctx.adapter.split_reason}"
        if not self.supports_objective and ctx.objective.name != "recon":
            return f"{self.name} only applies to the reconstruction loss"
        return None

    def run(self, ctx: ProbeContext) -> ProbeResult:
        reason = self.skip_reason(ctx)
        if reason is not None:
            return ProbeResult(self.name, self.kind, status="skipped", reason=reason, params=self.params())
        start = time.perf_counter()
        result = self._run(ctx)
        result.seconds = time.perf_counter() - start
        result.params = self.params()
        if ctx.budget.expired() and result.status == "complete" and result.reason == "":
            result.status, result.reason = "incomplete", "stopped by the time budget"
        return result

    @abstractmethod
    def _run(self, ctx: ProbeContext) -> ProbeResult:
        """Do the work; return candidates and/or verified findings."""
