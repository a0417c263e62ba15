"""Findings: verified adversarial anomalies and certificates.

Probes propose *candidates*; nothing becomes a finding until its loss (or score) and its
distance to all normal data have been recomputed in float64 on the CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .baseline import Baseline
from .effort import NEVER, Stop
from .geometry import NearestNeighbours
from .model.adapter import AutoencoderAdapter
from .verdict import SEVERITIES, SEVERITY_RANK

log = logging.getLogger(__name__)

PREFILTER_LOSS_SLACK = 1.5  # candidates up to 1.5·τ in the model's dtype go on to verification
PREFILTER_DISTANCE_SLACK = 0.9
MAX_VERIFY = 4096
MAX_NONFINITE = 64  # non-finite candidates verified per probe: one is enough to fail, a few show the extent
SCREEN_AFTER_STOP = 1024  # candidates still screened per probe once the time limit or a signal has come
VERIFY_WORK = 1 << 26  # parameters × rows of one float64 verification batch (512 rows for small models)
VERIFY_AFTER_STOP = 64  # ... and verified: one small batch, so a large model overruns the cap by little
MERGE_FRACTION = 0.25  # findings closer than 0.25·s to a better one are near-duplicates
NON_FINITE = "non-finite"


def loose_threshold(tau: float, slack: float = PREFILTER_LOSS_SLACK) -> float:
    """``τ`` loosened by ``slack`` (1.5 → 50 % above), also for a score threshold below zero."""
    return tau + (slack - 1.0) * abs(tau)


@dataclass
class Candidates:
    """What a search proposes: inputs (data space) and, optionally, the latents they came from."""

    x: torch.Tensor
    probe: str
    latent: torch.Tensor | None = None
    kind: str = "adversarial"

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, idx: torch.Tensor, kind: str | None = None) -> Candidates:
        idx = idx.cpu()
        return Candidates(
            x=self.x[idx].cpu(),
            probe=self.probe,
            kind=kind or self.kind,
            latent=self.latent[idx].cpu() if self.latent is not None else None,
        )


@dataclass
class Finding:
    kind: str
    probe: str
    severity: str
    loss: float
    loss_ratio: float
    loss_ratio_min: float
    distance: float
    distance_ratio: float
    verified: bool
    nearest_index: int
    objective: str = "recon"
    score: float | None = None
    score_threshold: float | None = None
    x: np.ndarray | None = field(default=None, repr=False)
    reconstruction: np.ndarray | None = field(default=None, repr=False)
    nearest: np.ndarray | None = field(default=None, repr=False)  # the nearest normal sample (report gallery)
    latent: list[float] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, with_arrays: bool = True) -> dict[str, Any]:
        out = {
            "kind": self.kind,
            "probe": self.probe,
            "severity": self.severity,
            "objective": self.objective,
            "loss": self.loss,
            "loss_ratio": self.loss_ratio,
            "loss_ratio_min": self.loss_ratio_min,
            "distance": self.distance,
            "distance_ratio": self.distance_ratio,
            "verified": self.verified,
            "nearest_index": self.nearest_index,
            "score": self.score,
            "score_threshold": self.score_threshold,
            "latent": self.latent,
            "details": self.details,
        }
        if with_arrays and self.x is not None:
            out["x"] = _round_list(self.x)
            out["reconstruction"] = _round_list(self.reconstruction) if self.reconstruction is not None else None
            if self.nearest is not None:
                out["nearest"] = _round_list(self.nearest)
        return out


def _round_list(a: np.ndarray) -> list:
    return np.asarray(a, dtype=np.float32).astype(float).round(6).tolist()


def rank_key(f: Finding) -> tuple:
    return (SEVERITY_RANK.get(f.severity, 9), -f.distance_ratio, f.loss)


class Verifier:
    """Recomputes losses and distances in float64 on the CPU, against all normal data.

    ``adapter``: the float64 CPU copy of the model (the model's own dtype where a compiled graph
    refuses float64); ``native``: a CPU copy in the model's own dtype, which re-checks non-finite
    outputs the way the deployed detector computes them."""

    def __init__(self, adapter: AutoencoderAdapter, baseline: Baseline):
        self.baseline = baseline
        self.native = adapter.to("cpu", adapter.dtype)
        try:
            self.adapter = adapter.to("cpu", torch.float64)
            self.dtype = torch.float64
        except Exception as exc:  # some compiled graphs hard-code float32
            log.warning("float64 copy of the model failed (%s); verifying in %s on the CPU", exc, adapter.dtype)
            self.adapter, self.dtype = self.native, adapter.dtype
        self.neighbours = NearestNeighbours(baseline.normal.detach().to("cpu", torch.float64))
        # rows per float64 batch: fewer for large models, so that a stop waits for little work
        n_params = sum(p.numel() for p in self.adapter.module.parameters())
        self.batch_size = int(min(512, max(16, VERIFY_WORK // max(n_params, 1))))

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    def data_row(self, index: int) -> int:
        """The row of the normal data behind the ``index``-th point of the distance index."""
        return int(self.baseline.normal_rows[index])

    @torch.no_grad()
    def measure(
        self, x: torch.Tensor, batch_size: int | None = None, stop: Stop = NEVER
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return float64 ``(loss, distance, nearest normal index, reconstruction)``; a ``stop`` that
        is reached between batches ends the measurement early (fewer rows come back)."""
        losses, dists, idxs, recs = [], [], [], []
        batch_size = batch_size or self.batch_size
        for i in range(0, x.shape[0], batch_size):
            if i and stop.reached():
                break
            xb = x[i : i + batch_size].detach().to("cpu", self.dtype)
            loss, rec = self.adapter.loss_and_reconstruction(xb)
            d, j = self.neighbours.query(xb.to(torch.float64))
            losses.append(loss.double())
            recs.append(rec.double())
            dists.append(d)
            idxs.append(j)
        if not losses:
            empty = np.empty(0)
            return empty, empty, empty.astype(int), np.empty((0, *x.shape[1:]))
        return (torch.cat(losses).numpy(), torch.cat(dists).numpy(), torch.cat(idxs).numpy(), torch.cat(recs).numpy())


def evaluate_score(
    score: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 1024
) -> torch.Tensor:
    """Scores of ``x`` in batches, no graph kept. Autograd stays enabled because some scores
    (GradCon) take gradients internally."""
    outs = []
    with torch.enable_grad():
        for i in range(0, x.shape[0], batch_size):
            outs.append(score(x[i : i + batch_size]).detach())
    return torch.cat(outs) if outs else torch.empty(0, device=x.device)


def prefilter(
    cands: Candidates,
    adapter: AutoencoderAdapter,
    baseline: Baseline,
    score_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    threshold: float | None = None,
    stop: Stop = NEVER,
) -> tuple[Candidates, Candidates]:
    """Cheap screening in the model's dtype on its device before float64 verification.

    Returns ``(candidates, non-finite candidates)``: the first scored at most a little above the
    threshold and at least about ``min(s, δ)`` from the normal data (lowest scores first, at most
    ``MAX_VERIFY``); the second, finite inputs whose score came out NaN or inf, at any distance (a
    deployed ``score > τ`` test calls a NaN normal)."""
    if len(cands) == 0:
        return cands, cands
    threshold = baseline.tau_op if threshold is None else threshold
    if stop.reached():  # past the time limit or a signal: screen one small batch, no more
        n_params = sum(p.numel() for p in adapter.module.parameters())
        most = min(SCREEN_AFTER_STOP, max(VERIFY_AFTER_STOP, 4 * VERIFY_WORK // max(n_params, 1)))
        cands = cands.take(torch.arange(min(len(cands), most)))
    x = cands.x.to(adapter.device, adapter.dtype)
    score = evaluate_score(score_fn or adapter.loss, x)
    with torch.no_grad():
        dist = torch.cat([baseline.neighbours.query(x[i : i + 4096])[0] for i in range(0, x.shape[0], 4096)])
    finite_input = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    bad = torch.nonzero(finite_input & ~torch.isfinite(score)).flatten()[:MAX_NONFINITE]
    keep = (score <= loose_threshold(threshold)) & (dist >= baseline.candidate_distance * PREFILTER_DISTANCE_SLACK)
    idx = torch.nonzero(keep & torch.isfinite(score)).flatten()
    most = VERIFY_AFTER_STOP if stop.reached() else MAX_VERIFY
    if idx.numel() > most:
        idx = idx[torch.argsort(score[idx], stable=True)[:most]]
    return cands.take(idx), cands.take(bad, kind=NON_FINITE)


def verify(
    cands: Candidates,
    verifier: Verifier,
    *,
    objective: str = "recon",
    score_fn64: Callable[[torch.Tensor], torch.Tensor] | None = None,
    tau_min: float | None = None,
    tau_op: float | None = None,
    stop: Stop = NEVER,
) -> list[Finding]:
    """Turn screened candidates into verified findings (float64, CPU).

    For ``objective == "recon"`` severity follows the loss; for a scorer's adaptive search,
    ``score_fn64`` gives the float64 score and ``tau_min``/``tau_op`` its thresholds. Non-finite
    candidates are re-checked in the model's own dtype on the CPU (and for a scorer, in float64).
    """
    if len(cands) == 0:
        return []
    if cands.kind == NON_FINITE:
        return _verify_nonfinite(cands, verifier, objective, score_fn64)
    b = verifier.baseline
    loss, dist, nn_idx, rec = verifier.measure(cands.x, stop=stop)
    n = len(loss)
    if score_fn64 is not None:
        x64 = cands.x[:n].detach().to("cpu", verifier.dtype)
        score = evaluate_score(score_fn64, x64, 256).double().cpu().numpy()
    else:
        score = loss
    t_min = b.tau_min if tau_min is None else tau_min
    t_op = b.tau_op if tau_op is None else tau_op
    findings = []
    for i in np.flatnonzero(np.isfinite(score)):
        sev = b.severity(float(score[i]), float(dist[i]), t_min, t_op)
        if sev is None:
            continue
        findings.append(
            _finding(
                cands,
                i,
                verifier,
                sev,
                objective,
                loss[i],
                dist[i],
                nn_idx[i],
                rec[i],
                float(score[i]) if score_fn64 is not None else None,
                t_op if score_fn64 is not None else None,
            )
        )
    return findings


def measured_finding(
    verifier: Verifier,
    *,
    kind: str,
    probe: str,
    severity: str,
    loss: float,
    distance: float,
    nearest: int,
    x: np.ndarray,
    reconstruction: np.ndarray | None,
    objective: str = "recon",
    score: float | None = None,
    threshold: float | None = None,
    latent: list[float] | None = None,
    details: dict | None = None,
) -> Finding:
    """A verified finding from float64 measurements; ``nearest`` is the verifier's index of the
    nearest normal sample. Every finding, search or certificate, is built here."""
    b = verifier.baseline
    with np.errstate(invalid="ignore", divide="ignore"):
        return Finding(
            kind=kind,
            probe=probe,
            severity=severity,
            objective=objective,
            loss=float(loss),
            loss_ratio=float(loss / b.tau_op),
            loss_ratio_min=float(loss / b.tau_min) if b.tau_min > 0 else float("inf"),
            distance=float(distance),
            distance_ratio=float(distance / b.scale),
            verified=True,
            nearest_index=verifier.data_row(int(nearest)),
            score=score,
            score_threshold=threshold,
            x=x,
            reconstruction=reconstruction,
            latent=latent,
            details=details or {},
        )


def _finding(
    cands: Candidates,
    i: int,
    verifier: Verifier,
    severity: str,
    objective: str,
    loss: float,
    dist: float,
    nn_index: int,
    rec: np.ndarray | None,
    score: float | None,
    threshold: float | None,
    details: dict | None = None,
) -> Finding:
    latent = cands.latent[i].detach().cpu().double().flatten().tolist() if cands.latent is not None else None
    return measured_finding(
        verifier,
        kind=cands.kind,
        probe=cands.probe,
        severity=severity,
        loss=loss,
        distance=dist,
        nearest=nn_index,
        x=cands.x[i].detach().cpu().double().numpy(),
        reconstruction=rec,
        objective=objective,
        score=score,
        threshold=threshold,
        latent=latent,
        details=details,
    )


@torch.no_grad()
def _verify_nonfinite(
    cands: Candidates, verifier: Verifier, objective: str, score_fn64: Callable[[torch.Tensor], torch.Tensor] | None
) -> list[Finding]:
    """A non-finite candidate stands when recomputing it on the CPU in the model's own dtype gives a
    non-finite loss or output again (for a scorer: a non-finite float64 score). Always critical."""
    x = cands.x.detach().to("cpu")
    native_loss, native_rec = verifier.native.loss_and_reconstruction(x.to(verifier.native.dtype))
    flat_rec = native_rec.reshape(len(x), -1)
    out_bad = ~torch.isfinite(flat_rec).all(dim=1)
    bad = ~torch.isfinite(native_loss) | out_bad
    if score_fn64 is not None:
        bad = ~torch.isfinite(evaluate_score(score_fn64, x.to(verifier.dtype), 256).cpu())
    loss64, rec64 = verifier.adapter.loss_and_reconstruction(x.to(verifier.dtype))
    dist, nn_idx = verifier.neighbours.query(x.to(torch.float64).reshape(len(x), -1))
    findings = []
    for i in np.flatnonzero(bad.numpy()):
        details = {
            "non_finite": "score" if score_fn64 is not None else ("output" if bool(out_bad[i]) else "loss"),
            "model_dtype_loss": float(native_loss[i]),
            "float64_loss": float(loss64[i]),
            "float64_finite": bool(torch.isfinite(loss64[i])),
        }
        findings.append(
            _finding(
                cands,
                i,
                verifier,
                "critical",
                objective,
                float(native_loss[i]),
                float(dist[i]),
                int(nn_idx[i]),
                rec64[i].double().numpy(),
                None,
                None,
                details,
            )
        )
    return findings


def greedy_merge(X: torch.Tensor, radius: float, block: int = 1024) -> tuple[list[int], list[int]]:
    """Greedy near-duplicate suppression over rows already in rank order: a row is kept unless
    a kept row before it lies closer than ``radius``. Returns ``(kept rows, rows each absorbed)``.

    Distances come blockwise from one matrix product per block of rows (GEMM identity), only
    for rows not yet absorbed and only towards later rows; the greedy pass itself is cheap.
    """
    n = X.shape[0]
    sq = X.pow(2).sum(dim=1)
    taken = np.zeros(n, dtype=bool)
    kept, absorbed = [], []
    for s in range(0, n, block):
        rows = s + np.flatnonzero(~taken[s : s + block])
        if rows.size == 0:
            continue
        r = torch.as_tensor(rows)
        near = np.zeros((rows.size, n), dtype=bool)
        near[:, s:] = ((sq[r, None] + sq[None, s:] - 2.0 * X[r] @ X[s:].T) < radius * radius).numpy()
        for row, i in enumerate(rows):
            if taken[i]:
                continue
            new = near[row] & ~taken
            new[: i + 1] = False
            taken |= new
            kept.append(int(i))
            absorbed.append(int(new.sum()))
    return kept, absorbed


def merge_and_rank(findings: list[Finding], scale: float, top_k: int = 64) -> tuple[list[Finding], dict[str, int]]:
    """Merge near-duplicates (closer than ``MERGE_FRACTION · s`` to a better-ranked finding), rank,
    and keep the arrays of the top ``top_k``. Returns ``(findings, counts)``."""
    counts = {"verified": len(findings)}
    ordered = sorted(findings, key=rank_key)
    array_findings = [f for f in ordered if f.x is not None]
    others = [f for f in ordered if f.x is None]
    kept: list[Finding] = []
    if array_findings:
        X = torch.as_tensor(np.stack([f.x.reshape(-1) for f in array_findings]), dtype=torch.float64)
        for i, duplicates in zip(*greedy_merge(X, MERGE_FRACTION * scale)):
            kept.append(array_findings[i])
            array_findings[i].details.setdefault("merged_duplicates", duplicates)
    result = sorted(kept + others, key=rank_key)
    for f in result[top_k:]:
        f.x = f.reconstruction = f.nearest = None
    counts["reported"] = len(result)
    counts.update({sev: sum(f.severity == sev for f in result) for sev in SEVERITIES})
    counts["merged_duplicates"] = len(findings) - len(result)
    return result, counts
