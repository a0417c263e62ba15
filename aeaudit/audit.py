"""Orchestration: load → baseline → probes → verified findings → scorer comparison → result.

Each stage is a function of its own so that other commands (``compare``, ``harden``) and the
scorer comparison can reuse them: :func:`prepare` builds the audit state, :func:`run_probes`
runs any set of probes against any objective, :func:`scan` ties them together.
"""
from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .baseline import Baseline, compute_baseline, quantile_sample
from .budget import Budget
from .config import ScanConfig
from .data import load_data, shape_samples
from .errors import InputError
from .findings import Finding, Verifier, merge_and_rank, prefilter, verify
from .geometry import resolve_domain
from .model.adapter import AutoencoderAdapter
from .model.loading import file_sha256, load_model
from .model.shapes import conv_input_shape, finalize_shapes
from .probes import Objective, ProbeContext, ProbeResult, make_probe
from .progress import Reporter
from .regions import Region, describe, group_regions
from .scorers.compare import compare_scorers, scorer_budget_share

log = logging.getLogger(__name__)
SCHEMA_VERSION = "1.1"


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
    timings: dict[str, float] = field(default_factory=dict)

    def recon_objective(self) -> Objective:
        return Objective("recon", self.adapter.loss, self.baseline.tau_min, self.baseline.tau_op)

    def context(self, objective: Objective, budget: Budget) -> ProbeContext:
        return ProbeContext(adapter=self.adapter, baseline=self.baseline, objective=objective, budget=budget,
                            seed=self.config.seed, reporter=self.reporter, verifier=self.verifier,
                            settings=self.config.probe_options())


@dataclass
class AuditResult:
    """The outcome of :func:`scan`; ``to_dict()`` is ``report.json``."""

    config: ScanConfig
    status: str
    model: dict[str, Any]
    data: dict[str, Any]
    thresholds: dict[str, Any]
    probes: list[dict[str, Any]]
    findings: list[Finding]
    counts: dict[str, int]
    artifacts: dict[str, Any]
    scorers: dict[str, Any]
    timings: dict[str, float]
    environment: dict[str, Any]
    errors: list[str] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    region_grouping: dict[str, Any] = field(default_factory=dict)

    def gate_failed(self, fail_on: str | None = None) -> bool:
        fail_on = fail_on or self.config.fail_on
        if fail_on == "never":
            return False
        levels = ("critical",) if fail_on == "critical" else ("critical", "high")
        return any(f.severity in levels for f in self.findings)

    def exit_code(self, fail_on: str | None = None) -> int:
        """0 pass, 1 findings at or above ``fail_on``, 3 a check crashed (internal error)."""
        if self.gate_failed(fail_on):
            return 1
        return 3 if self.errors else 0

    @property
    def verdict(self) -> str:
        regions = describe(self.regions, self.counts.get("verified", len(self.findings)))
        if self.gate_failed():
            return f"FAIL: {regions} (gate --fail-on {self.config.fail_on})"
        if self.errors:
            return f"ERROR: {len(self.errors)} check(s) failed to run"
        found = f"{regions}, all below the gate" if self.regions else "none found within budget"
        return f"PASS: {found} (gate --fail-on {self.config.fail_on})"

    def to_dict(self, with_arrays: bool = True) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "aeaudit", "version": __version__},
            "command_line": self.config.command_line,
            "seed": self.config.seed,
            "device": self.model.get("device"),
            "status": self.status,
            "verdict": self.verdict,
            "gate": {"fail_on": self.config.fail_on, "failed": self.gate_failed(), "exit_code": self.exit_code()},
            "settings": self.config.to_dict(),
            "model": self.model,
            "data": self.data,
            "thresholds": self.thresholds,
            "probes": self.probes,
            "counts": self.counts,
            "regions": [r.to_dict(with_arrays) for r in self.regions],
            "region_grouping": self.region_grouping,
            "findings": [f.to_dict(with_arrays) for f in self.findings],
            "artifacts": self.artifacts,
            "scorers": self.scorers,
            "timings": self.timings,
            "environment": self.environment,
            "errors": self.errors,
        }


def _timed(timings: dict[str, float], key: str):
    class _T:
        def __enter__(self):
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            timings[key] = round(time.perf_counter() - self.t, 4)

    return _T()


def prepare(model: str | Path | nn.Module | AutoencoderAdapter, data: str | Path | np.ndarray | torch.Tensor,
            config: ScanConfig, reporter: Reporter | None = None) -> AuditState:
    """Load the model and data, check they fit, and compute the normal baseline."""
    reporter = reporter or Reporter(enabled=False if config.quiet else None)
    timings: dict[str, float] = {}
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % (2**32))
    with _timed(timings, "load"):
        adapter = model if isinstance(model, AutoencoderAdapter) else load_model(model, config.load_options())
        arr = load_data(data, key=config.data_key, what="normal data")
        want = config.input_shape or adapter.input_shape or conv_input_shape(adapter.module, arr.shape[1:])
        arr, shape = shape_samples(arr, want, "normal data")
        adapter.input_shape = shape
        finalize_shapes(adapter, torch.as_tensor(np.array(arr[:2]), dtype=torch.float32))
        anomalies = None
        if config.anomalies:
            anomalies = load_data(config.anomalies, key=config.anomalies_key, what="anomalies")
            anomalies, _ = shape_samples(anomalies, shape, "anomalies")
            anomalies = np.asarray(anomalies)
    with _timed(timings, "baseline"):
        domain = resolve_domain(config.bounds, np.asarray(arr[: min(len(arr), 10_000)]))
        baseline = compute_baseline(adapter, arr, domain, seed=config.seed, heldout_fraction=config.heldout_fraction,
                                    fpr=config.fpr, threshold=config.threshold, min_distance=config.min_distance)
        verifier = Verifier(adapter, baseline)
    summary = {
        "source": str(data) if isinstance(data, (str, Path)) else "<in memory>",
        "sha256": file_sha256(Path(data)) if isinstance(data, (str, Path)) else "",
        "n_samples": int(len(arr)),
        "sample_shape": list(shape),
        "dtype": str(arr.dtype),
        "value_range": [float(np.min(arr[:10_000])), float(np.max(arr[:10_000]))],
        "anomalies": ({"source": str(config.anomalies), "n_samples": int(len(anomalies)),
                       "loss_sample": quantile_sample(adapter.losses(torch.tensor(anomalies)).double().cpu().numpy())}
                      if anomalies is not None else None),
        "verification_dtype": verifier.dtype_name,
    }
    return AuditState(config, adapter, arr, baseline, verifier, anomalies, summary, reporter, timings)


def run_probes(state: AuditState, names: tuple[str, ...] | list[str], objective: Objective, budget: Budget,
               score_fn64=None) -> tuple[list[ProbeResult], list[Finding], bool]:
    """Run probes against ``objective``; screen and verify their candidates.

    Returns ``(probe results, verified findings, interrupted)``. The budget is shared among the
    probes by their ``budget_weight``; a probe that crashes is recorded with status ``error``.
    """
    probes = [make_probe(n, state.config.probe_options()) for n in names]
    results: list[ProbeResult] = []
    findings: list[Finding] = []
    total_weight = sum(p.budget_weight for p in probes) or 1.0
    remaining_weight = total_weight
    interrupted = False
    for probe in probes:
        share = probe.budget_weight / remaining_weight if remaining_weight > 0 else 1.0
        remaining_weight -= probe.budget_weight
        ctx = state.context(objective, budget.share(share))
        try:
            result = probe.run(ctx)
        except KeyboardInterrupt:
            results.append(ProbeResult(probe.name, probe.kind, status="incomplete", reason="interrupted (Ctrl-C)"))
            interrupted = True
            break
        except InputError:
            raise
        except Exception as exc:  # one broken check must not hide the others' results
            log.error("probe %s failed: %s: %s", probe.name, type(exc).__name__, exc)
            log.debug("traceback of probe %s", probe.name, exc_info=True)
            result = ProbeResult(probe.name, probe.kind, status="error", reason=f"{type(exc).__name__}: {exc}")
        if result.candidates is not None and len(result.candidates):
            screened = prefilter(result.candidates, state.adapter, state.baseline, objective.score, objective.tau_op)
            found = verify(screened, state.verifier, objective=objective.name, score_fn64=score_fn64,
                           tau_min=objective.tau_min, tau_op=objective.tau_op)
            result.artifacts["verified"] = len(found)
            findings.extend(found)
        for f in result.findings:
            f.objective = objective.name
        findings.extend(result.findings)
        results.append(result)
    return results, findings, interrupted


def environment() -> dict[str, Any]:
    import numpy
    import scipy
    import sklearn

    return {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "numpy": numpy.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__,
            "cuda": torch.version.cuda if torch.cuda.is_available() else None}


def scan(model: str | Path | nn.Module | AutoencoderAdapter, data: str | Path | np.ndarray | torch.Tensor,
         config: ScanConfig | None = None, *, reporter: Reporter | None = None, **overrides: Any) -> AuditResult:
    """Audit an autoencoder for blind spots.

    ``model``: a checkpoint path, an ``nn.Module`` or a loaded adapter. ``data``: normal samples
    (path or array). Settings come from ``config`` and/or keyword overrides of
    :class:`~aeaudit.config.ScanConfig` fields. Returns an :class:`AuditResult`; nothing is written.
    """
    config = (config or ScanConfig()).with_overrides(**overrides) if overrides else (config or ScanConfig())
    start = time.perf_counter()
    state = prepare(model, data, config, reporter)
    budget = Budget(config.budget)
    with _timed(state.timings, "probes"):  # the scorer comparison's share is kept back; unused probe time carries over
        probe_budget = budget.share(1.0 - scorer_budget_share(config.scorers))
        results, raw_findings, interrupted = run_probes(state, config.probes, state.recon_objective(), probe_budget)
    with _timed(state.timings, "regions"):  # on every verified finding, before merging drops arrays
        regions, region_grouping = group_regions(raw_findings, state.verifier, state.baseline)
    findings, counts = merge_and_rank(raw_findings, state.baseline.scale, config.top_k)
    counts["regions"] = len(regions)
    for f in findings + [r.witness for r in regions]:  # the gallery shows each input beside its nearest normal sample
        if f.x is not None and 0 <= f.nearest_index < len(state.data):
            f.nearest = np.asarray(state.data[f.nearest_index], dtype=np.float64)
    artifacts = {r.probe: r.artifacts for r in results if r.artifacts}
    scorers: dict[str, Any] = {}
    if config.scorers and not interrupted:
        with _timed(state.timings, "scorers"):
            try:
                scorers = compare_scorers(state, findings, budget)
            except KeyboardInterrupt:
                interrupted = True
    state.timings["total"] = round(time.perf_counter() - start, 4)
    incomplete = interrupted or any(r.status == "incomplete" for r in results) or scorers.get("status") == "incomplete"
    errors = [f"{r.probe}: {r.reason}" for r in results if r.status == "error"]
    return AuditResult(
        config=config,
        status="incomplete" if incomplete else "complete",
        model=state.adapter.card.to_dict(),
        data=state.data_summary,
        thresholds=state.baseline.summary(),
        probes=[r.summary() for r in results],
        findings=findings,
        counts=counts,
        artifacts=artifacts,
        scorers=scorers,
        timings=state.timings,
        environment=environment(),
        errors=errors,
        regions=regions,
        region_grouping=region_grouping,
    )
