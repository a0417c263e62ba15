"""Orchestration: load → baseline → probes → verified findings → scorer comparison → result.

:func:`prepare` builds the audit state (model, data, baseline, verifier), :func:`scan` runs the
selected probes against the reconstruction loss (:func:`aeaudit.runner.run_probes`), ranks the
verified findings, compares the scorers (:mod:`aeaudit.gaps`) and returns an :class:`AuditResult`,
whose verdict follows :mod:`aeaudit.verdict`.
"""

from __future__ import annotations

import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .baseline import compute_baseline, quantile_sample
from .config import ScanConfig, scan_config
from .data import load_data, shape_samples
from .effort import Stop
from .findings import Finding, Verifier, merge_and_rank
from .gaps import compare_scorers
from .geometry import resolve_domain
from .model.adapter import AutoencoderAdapter
from .model.loading import file_sha256, open_model
from .progress import Reporter
from .regions import Region, describe, group_regions
from .report.json_report import SCHEMA_VERSION
from .runner import AuditState, run_probes
from .verdict import GATES, Outcome, decide, exit_code, gated


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
    stopped: str | None = None  # why work was cut short (time limit, signal), if it was
    regions: list[Region] = field(default_factory=list)
    region_grouping: dict[str, Any] = field(default_factory=dict)

    def gate_failed(self, fail_on: str | None = None) -> bool:
        return any(gated(f.severity, fail_on or self.config.fail_on) for f in self.findings)

    @property
    def outcome(self) -> Outcome:
        return decide(
            (f.severity for f in self.findings), self.status == "complete", len(self.errors), self.config.fail_on
        )

    def exit_code(self) -> int:
        """The CI contract: 0 pass, 1 fail, 3 a check crashed, 4 inconclusive (see :mod:`aeaudit.verdict`)."""
        return exit_code(self.outcome, self.config.inconclusive)

    @property
    def certification(self) -> dict[str, bool]:
        """Per region the certify check examined: whether it ended 100 % certified-or-near."""
        art = self.artifacts.get("certify")
        return dict(art.get("certified") or {}) if isinstance(art, dict) else {}

    @property
    def certified(self) -> bool:
        """A *certified PASS*: a PASS whose every examined region is proven free of blind spots."""
        cert = self.certification
        return self.outcome is Outcome.PASS and bool(cert) and all(cert.values())

    @property
    def evaluations(self) -> int:
        return sum(int(p.get("evaluations") or 0) for p in self.probes)

    @property
    def verdict(self) -> str:
        outcome, gate = self.outcome, f"gate --fail-on {self.config.fail_on}"
        regions = describe(self.regions, self.counts.get("verified", len(self.findings)))
        if outcome is Outcome.FAIL:
            return f"FAIL: {regions} ({gate})"
        note = f"; below the gate: {regions}" if self.regions else ""
        if outcome is Outcome.ERROR:
            return (
                f"ERROR: {len(self.errors)} check(s) failed to run; the others found nothing at or above the gate{note}"
            )
        if outcome is Outcome.INCONCLUSIVE:
            return (
                f"INCONCLUSIVE: {self.stopped or 'some planned work did not complete'}; nothing at or above the "
                f"gate in the {self.evaluations:,} evaluations done{note} ({gate})"
            )
        checks = sum(p.get("status") == "complete" for p in self.probes)
        if self.certified:
            names = {"input": "the input region", "latent": "the latent map"}
            spaces = " and ".join(names.get(s, s) for s in self.certification)
            skipped = (self.artifacts.get("certify") or {}).get("skipped") or {}
            left = "".join(f"; {names.get(s, s)} not examined ({why})" for s, why in skipped.items())
            return (
                f"PASS (certified): bounds prove {spaces} free of blind spots (nothing ≥ δ from the normal data "
                f"reconstructs below τ_op){left}; {checks} checks found nothing at or above the gate{note} ({gate})"
            )
        return (
            f"PASS: nothing at or above the gate in {self.evaluations:,} evaluations of {checks} checks "
            f"(search evidence, not proof){note} ({gate})"
        )

    def to_dict(self, with_arrays: bool = True) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "aeaudit", "version": __version__},
            "command_line": self.config.command_line,
            "seed": self.config.seed,
            "device": self.model.get("device"),
            "status": self.status,
            "stopped": self.stopped,
            "outcome": self.outcome.value,
            "certified": self.certified,
            "certification": self.certification,
            "verdict": self.verdict,
            "gate": {
                "fail_on": self.config.fail_on,
                "levels": list(GATES[self.config.fail_on]),
                "failed": self.gate_failed(),
                "outcome": self.outcome.value,
                "inconclusive_as": self.config.inconclusive,
                "exit_code": self.exit_code(),
            },
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


@contextmanager
def _timed(timings: dict[str, float], key: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = round(time.perf_counter() - start, 4)


def prepare(
    model: str | Path | nn.Module | AutoencoderAdapter,
    data: str | Path | np.ndarray | torch.Tensor,
    config: ScanConfig,
    reporter: Reporter | None = None,
) -> AuditState:
    """Load the model and data, check they fit, and compute the normal baseline. The time limit
    starts when this returns: it covers the checks, searches, verification and scorer comparison."""
    reporter = reporter or Reporter(enabled=False if config.quiet else None)
    timings: dict[str, float] = {}
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % (2**32))
    with _timed(timings, "load"):
        arr = load_data(data, key=config.data_key, what="normal data")
        adapter, arr = open_model(model, arr, config.load)
        anomalies = None
        if config.anomalies:
            anomalies = load_data(config.anomalies, key=config.anomalies_key, what="anomalies")
            anomalies = np.asarray(shape_samples(anomalies, adapter.input_shape, "anomalies")[0])
    with _timed(timings, "baseline"):
        domain = resolve_domain(config.bounds, np.asarray(arr[: min(len(arr), 10_000)]))
        baseline = compute_baseline(
            adapter,
            arr,
            domain,
            seed=config.seed,
            heldout_fraction=config.heldout_fraction,
            fpr=config.fpr,
            threshold=config.threshold,
            min_distance=config.min_distance,
        )
        verifier = Verifier(adapter, baseline)
    summary = {
        "source": str(data) if isinstance(data, (str, Path)) else "<in memory>",
        "sha256": file_sha256(Path(data)) if isinstance(data, (str, Path)) else "",
        "n_samples": int(len(arr)),
        "sample_shape": list(adapter.input_shape),
        "dtype": str(arr.dtype),
        "value_range": [float(np.min(arr[:10_000])), float(np.max(arr[:10_000]))],
        "anomalies": (
            {
                "source": str(config.anomalies),
                "n_samples": int(len(anomalies)),
                "loss_sample": quantile_sample(adapter.losses(torch.tensor(anomalies)).double().cpu().numpy()),
            }
            if anomalies is not None
            else None
        ),
        "verification_dtype": verifier.dtype_name,
    }
    return AuditState(
        config, adapter, arr, baseline, verifier, anomalies, summary, reporter, Stop(config.time_limit), timings
    )


def environment() -> dict[str, Any]:
    from importlib.metadata import version

    import numpy
    import scipy

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": version("scikit-learn"),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }


def scan(
    model: str | Path | nn.Module | AutoencoderAdapter,
    data: str | Path | np.ndarray | torch.Tensor,
    config: ScanConfig | None = None,
    *,
    reporter: Reporter | None = None,
    **overrides: Any,
) -> AuditResult:
    """Audit an autoencoder for blind spots.

    ``model``: a checkpoint path, an ``nn.Module`` or a loaded adapter. ``data``: normal samples
    (path or array). Settings come from ``config`` and/or keyword overrides of
    :class:`~aeaudit.config.ScanConfig` fields (and of the loading options, e.g. ``arch=``).
    Returns an :class:`AuditResult`; nothing is written.
    """
    config = scan_config(config, **overrides)
    start = time.perf_counter()
    state = prepare(model, data, config, reporter)
    with _timed(state.timings, "probes"):
        results, raw_findings = run_probes(state, [config.probe(n) for n in config.probes], state.recon_objective())
    with _timed(state.timings, "regions"):  # on every verified finding, before merging drops arrays
        regions, region_grouping = group_regions(raw_findings, state.verifier, state.baseline)
    findings, counts = merge_and_rank(raw_findings, state.baseline.scale, config.top_k)
    counts["regions"] = len(regions)
    for f in findings + [r.witness for r in regions]:  # the gallery shows each input beside its nearest normal sample
        if f.x is not None and 0 <= f.nearest_index < len(state.data):
            f.nearest = np.asarray(state.data[f.nearest_index], dtype=np.float64)
    artifacts = {r.probe: r.artifacts for r in results if r.artifacts}
    scorers: dict[str, Any] = {}
    if config.scorers:
        with _timed(state.timings, "scorers"):
            scorers = compare_scorers(state, findings, results)
    state.timings["total"] = round(time.perf_counter() - start, 4)
    incomplete = any(r.status == "incomplete" for r in results) or scorers.get("status") == "incomplete"
    errors = [f"{r.probe}: {r.reason}" for r in results if r.status == "error"] + scorers.get("errors", [])
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
        stopped=state.stop.reason() if incomplete else None,
        regions=regions,
        region_grouping=region_grouping,
    )
