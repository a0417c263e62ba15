"""The shared base of every check and search (one subclass per file, as in torchattacks).

A probe is a dataclass: its fields are its settings (``__repr__`` and :meth:`Probe.params` record
them), its ``effort_presets`` translate ``--effort`` into those settings, and ``run(ctx)`` does the
work. Search probes return :class:`~aeaudit.findings.Candidates`, which the audit screens and
re-verifies in float64; analytic probes build and verify their own certificate findings. What a
probe needs from the audit comes in one :class:`ProbeContext`.

The amount of work is fixed by the settings alone. ``ctx.stop`` (the time limit, or a signal) may
end it early; a probe asks it between batches and then reports status ``incomplete``.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from ..baseline import Baseline
from ..effort import NEVER, Stop
from ..errors import InputError
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
    stop: Stop = NEVER
    seed: int = 0
    reporter: Reporter = SILENT
    verifier: Verifier | None = None
    seeds: torch.Tensor | None = None  # inputs of the far, low-loss findings verified so far in this run
    latent_seeds: torch.Tensor | None = None  # the latent codes of those that came from latent space

    def generator(self, salt: int = 0) -> torch.Generator:
        """A seeded generator on the CPU (draw there, then move: identical across devices)."""
        g = torch.Generator(device="cpu")
        g.manual_seed(self.seed * 1_000_003 + salt)
        return g


@dataclass
class ProbeResult:
    """What one probe did. ``status``: ``complete``, ``incomplete`` (stopped early), ``skipped``, ``error``."""

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
    details: str = ""  # the full text of an error (a traceback stays under --debug)

    def stopped(self, reason: str) -> ProbeResult:
        """Mark the result cut short by ``reason`` (keeps a more specific reason already given)."""
        self.status = "incomplete"
        self.reason = self.reason or reason
        return self

    def summary(self) -> dict[str, Any]:
        out = {
            "probe": self.probe,
            "kind": self.kind,
            "status": self.status,
            "reason": self.reason,
            "evaluations": self.evaluations,
            "seconds": round(self.seconds, 3),
            "params": self.params,
            "candidates": len(self.candidates) if self.candidates is not None else 0,
        }
        if self.details:
            out["details"] = self.details
        return out


@dataclass(eq=False)
class Probe(ABC):
    """Base class. Subclasses are dataclasses (their fields are their settings); they set ``name``,
    ``kind`` (``"search"`` or ``"analytic"``), ``needs_latent`` and ``effort_presets``, and implement ``_run``."""

    name: ClassVar[str] = "probe"
    kind: ClassVar[str] = "search"
    needs_latent: ClassVar[bool] = False
    supports_objective: ClassVar[bool] = True  # False: only meaningful for the reconstruction loss
    needs_gradients: ClassVar[bool] = False  # True: cannot run on a model without autograd (onnxruntime)
    effort_presets: ClassVar[dict[str, dict[str, Any]]] = {}  # --effort → settings (standard = the defaults)

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def skip_reason(self, ctx: ProbeContext) -> str | None:
        if self.needs_latent and not ctx.adapter.has_latent:
            return f"needs an encoder/decoder split: {ctx.adapter.split_reason}"
        if not self.supports_objective and ctx.objective.name != "recon":
            return f"{self.name} only applies to the reconstruction loss"
        if self.needs_gradients and not ctx.adapter.card.differentiable:
            return "needs gradients through the model, which runs without them here (onnxruntime)"
        return None

    def run(self, ctx: ProbeContext) -> ProbeResult:
        reason = self.skip_reason(ctx)
        if reason is not None:
            return ProbeResult(self.name, self.kind, status="skipped", reason=reason, params=self.params())
        start = time.perf_counter()
        if (stopped := ctx.stop.reason()) is not None:
            return ProbeResult(self.name, self.kind, params=self.params()).stopped(f"not run: {stopped}")
        result = self._run(ctx)
        result.seconds = time.perf_counter() - start
        result.params = self.params()
        return result

    @abstractmethod
    def _run(self, ctx: ProbeContext) -> ProbeResult:
        """Do the work; return candidates and/or verified findings."""


def require(ok: bool, probe: str, message: str) -> None:
    """A setting check: ``InputError`` naming the probe when ``ok`` is false."""
    if not ok:
        raise InputError(f"{probe}: {message}")


def check_counts(probe: Probe, *names: str, minimum: int = 1) -> None:
    for name in names:
        value = getattr(probe, name)
        require(
            isinstance(value, int) and value >= minimum,
            probe.name,
            f"{name} = {value!r} must be an integer ≥ {minimum}",
        )


def check_positive(probe: Probe, *names: str) -> None:
    for name in names:
        value = getattr(probe, name)
        ok = isinstance(value, (int, float)) and math.isfinite(value) and value > 0
        require(ok, probe.name, f"{name} = {value!r} must be a finite number > 0")
