"""Running probes: the state one audit shares, and :func:`run_probes`, which runs any set of probes
against any objective and turns their candidates into verified findings. The scan (``audit.py``)
and the scorer comparison (``gaps.py``) both build on it.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .baseline import Baseline
from .config import ScanConfig
from .effort import Stop
from .errors import InputError, one_line
from .findings import Finding, Verifier, prefilter, rank_key, verify
from .model.adapter import AutoencoderAdapter
from .probes import Objective, Probe, ProbeContext, ProbeResult
from .progress import Reporter

log = logging.getLogger(__name__)
SEEDS_MAX = 256  # findings handed to later probes as seeds (the certify check falsifies their boxes)


@dataclass
class AuditState:
    """Everything the probes and scorers share during one audit."""

    config: ScanConfig
    adapter: AutoencoderAdapter
    data: np.ndarray
    baseline: Baseline
    verifier: Verifier
    anomalies: np.ndarray | None
    data_summary: dict[str, Any]
    reporter: Reporter
    stop: Stop
    timings: dict[str, float] = field(default_factory=dict)

    def recon_objective(self) -> Objective:
        return Objective("recon", self.adapter.loss, self.baseline.tau_min, self.baseline.tau_op)

    def context(self, objective: Objective) -> ProbeContext:
        return ProbeContext(
            adapter=self.adapter,
            baseline=self.baseline,
            objective=objective,
            stop=self.stop,
            seed=self.config.seed,
            reporter=self.reporter,
            verifier=self.verifier,
        )


def run_probes(
    state: AuditState,
    probes: list[Probe],
    objective: Objective,
    score_fn64: Callable[[torch.Tensor], torch.Tensor] | None = None,
    verify_objective: Objective | None = None,
) -> tuple[list[ProbeResult], list[Finding]]:
    """Run ``probes`` against ``objective``; screen and verify their candidates.

    Candidates are screened with ``verify_objective`` (default: ``objective``) and verified in float64
    with ``score_fn64`` against its thresholds: a search may chase a surrogate, but findings are
    judged by the score itself. A probe that crashes is recorded with status ``error`` (its
    traceback goes to the debug log and the report); once the stop is reached the remaining probes
    are recorded as not run. Returns ``(probe results, verified findings)``.
    """
    judge = verify_objective or objective
    results: list[ProbeResult] = []
    findings: list[Finding] = []
    for probe in probes:
        if (stopped := state.stop.reason()) is not None:
            results.append(
                ProbeResult(
                    probe.name, probe.kind, status="incomplete", reason=f"not run: {stopped}", params=probe.params()
                )
            )
            continue
        ctx = state.context(objective)
        ctx.seeds, ctx.latent_seeds = _seeds(findings)
        try:
            result = probe.run(ctx)
        except KeyboardInterrupt:  # the library without the CLI's signal handler: keep what was found
            results.append(ProbeResult(probe.name, probe.kind, status="incomplete", reason="interrupted (Ctrl-C)"))
            state.stop.interrupt("Ctrl-C")
            continue
        except InputError:
            raise
        except Exception as exc:  # one broken check must not hide the others' results
            log.error("probe %s failed: %s", probe.name, one_line(exc))
            log.debug("traceback of probe %s", probe.name, exc_info=True)
            result = ProbeResult(
                probe.name,
                probe.kind,
                status="error",
                reason=one_line(exc),
                details=traceback.format_exc(),
                params=probe.params(),
            )
        for f in result.findings:
            f.objective = objective.name
        findings.extend(result.findings)
        if result.candidates is not None and len(result.candidates):
            screened, odd = prefilter(
                result.candidates, state.adapter, state.baseline, judge.score, judge.tau_op, stop=state.stop
            )
            verified = [
                *verify(
                    screened,
                    state.verifier,
                    objective=objective.name,
                    score_fn64=score_fn64,
                    tau_min=judge.tau_min,
                    tau_op=judge.tau_op,
                    stop=state.stop,
                ),
                *verify(odd, state.verifier, objective=objective.name, score_fn64=score_fn64),
            ]
            result.artifacts["verified"] = len(verified)
            findings.extend(verified)
        results.append(result)
    return results, findings


def _seeds(findings: list[Finding]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The inputs (and latent codes, where all have one) of the far, low-loss findings so far, best first."""
    far = sorted(
        (f for f in findings if f.severity in ("critical", "high") and f.x is not None and f.kind != "non-finite"),
        key=rank_key,
    )[:SEEDS_MAX]
    if not far:
        return None, None
    x = torch.as_tensor(np.stack([f.x.reshape(-1) for f in far]), dtype=torch.float64)
    latent = [f.latent for f in far if f.latent is not None]
    z = torch.as_tensor(np.asarray(latent), dtype=torch.float64) if latent else None
    return x, z
