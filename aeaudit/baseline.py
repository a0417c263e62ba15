"""The normal-data baseline every check is measured against.

Normal data is split (seeded) into a *reference* part, which scorers are fitted on, and a
*held-out* part that calibrates thresholds and the distance scale ``s`` (held-out → reference
nearest-neighbour distances). "Far from normal data" is measured against both parts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import InputError
from .geometry import Domain, NearestNeighbours
from .model.adapter import AutoencoderAdapter

log = logging.getLogger(__name__)

SCALE_QUANTILE = 0.99
DEFAULT_FAR_MULTIPLE = 2.0
HISTOGRAM_POINTS = 512  # quantiles of a loss distribution kept in report.json for its histogram


@dataclass
class Baseline:
    """Thresholds, scale and domain derived from normal data.

    ``tau_min``: the smallest loss of any normal sample (reference or held-out: the paper's worst-case bar).
    ``tau_op``: the operating threshold (given, or the ``1 − fpr`` quantile of held-out losses).
    ``scale``: ``s``, the 99th percentile of held-out → reference nearest-neighbour distances.
    ``min_distance``: ``δ``; a candidate is *far* when ``d(a) ≥ δ`` (default ``2·s``).
    ``neighbours``: exact distances to ALL normal data (reference and held-out), so that "far from
    every normal sample" means every one; ``normal_rows[i]`` is the data row of its ``i``-th point.
    """

    reference: torch.Tensor
    heldout: torch.Tensor
    heldout_losses: np.ndarray
    tau_min: float
    tau_op: float
    tau_op_source: str
    scale: float
    min_distance: float
    min_distance_source: str
    domain: Domain
    fpr: float
    neighbours: NearestNeighbours = field(repr=False)
    normal_rows: np.ndarray = field(repr=False)

    @property
    def normal(self) -> torch.Tensor:
        """All normal samples, reference part first (the points ``neighbours`` measures against)."""
        return self.neighbours.reference.reshape(-1, *self.reference.shape[1:])

    @property
    def candidate_distance(self) -> float:
        """The smallest distance at which a candidate can still become a finding (a warning lies ≥ s)."""
        return min(self.scale, self.min_distance)

    def severity(
        self, loss: float, distance: float, tau_min: float | None = None, tau_op: float | None = None
    ) -> str | None:
        """``critical`` (loss ≤ τ_min and d ≥ δ), ``high`` (loss ≤ τ_op and d ≥ δ), ``warning``
        (loss ≤ τ_min and s ≤ d < δ: more normal than every normal sample to the autoencoder, while a
        nearest-neighbour detector at the same false-positive rate would flag it) or ``None``."""
        tau_min = self.tau_min if tau_min is None else tau_min
        tau_op = self.tau_op if tau_op is None else tau_op
        if distance >= self.min_distance:
            if loss <= tau_min:
                return "critical"
            return "high" if loss <= tau_op else None
        return "warning" if distance >= self.scale and loss <= tau_min else None

    def summary(self) -> dict:
        q = np.quantile(self.heldout_losses, [0.0, 0.5, 0.99, 1.0]) if len(self.heldout_losses) else [np.nan] * 4
        return {
            "n_reference": int(self.reference.shape[0]),
            "n_heldout": int(self.heldout.shape[0]),
            "tau_min": self.tau_min,
            "tau_min_definition": "smallest loss of any normal sample (reference and held-out)",
            "tau_op": self.tau_op,
            "tau_op_source": self.tau_op_source,
            "fpr": self.fpr,
            "scale": self.scale,
            "scale_definition": f"{int(SCALE_QUANTILE * 100)}th percentile of held-out → reference nearest-neighbour distances",
            "min_distance": self.min_distance,
            "min_distance_source": self.min_distance_source,
            "distance_definition": "distance to the nearest of all normal samples (reference and held-out)",
            "domain": self.domain.to_dict(),
            "heldout_loss_quantiles": {
                "min": float(q[0]),
                "median": float(q[1]),
                "p99": float(q[2]),
                "max": float(q[3]),
            },
            "heldout_loss_sample": quantile_sample(self.heldout_losses),
        }


def quantile_sample(values: np.ndarray, n: int = HISTOGRAM_POINTS) -> list[float]:
    """A compact stand-in for a distribution: all values when there are at most ``n``, else ``n``
    evenly spaced quantiles (same histogram shape), rounded to 6 significant digits."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    v = v[np.isfinite(v)]
    if len(v) > n:
        v = np.quantile(v, np.linspace(0.0, 1.0, n))
    return [float(f"{x:.6g}") for x in v]


def split_indices(n: int, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if n < 5:
        raise InputError(f"normal data has {n} samples; aeaudit needs at least 5 (reference and held-out parts)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_held = min(max(1, int(round(n * heldout_fraction))), n - 1)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def compute_baseline(
    adapter: AutoencoderAdapter,
    data: np.ndarray,
    domain: Domain,
    *,
    seed: int = 0,
    heldout_fraction: float = 0.2,
    fpr: float = 0.01,
    threshold: float | None = None,
    min_distance: float | None = None,
    batch_size: int = 1024,
) -> Baseline:
    """Split, measure losses and distances, and derive ``τ_min``, ``τ_op``, ``s`` and ``δ``."""
    ref_idx, held_idx = split_indices(len(data), heldout_fraction, seed)
    device, dtype = adapter.device, adapter.dtype
    reference = torch.as_tensor(np.asarray(data[ref_idx]), dtype=dtype).to(device)
    heldout = torch.as_tensor(np.asarray(data[held_idx]), dtype=dtype).to(device)
    ref_losses = adapter.losses(reference, batch_size).double().cpu().numpy()
    held_losses = adapter.losses(heldout, batch_size).double().cpu().numpy()
    if not (np.isfinite(ref_losses).all() and np.isfinite(held_losses).all()):
        raise InputError(
            "the model's reconstruction loss is NaN or inf on normal data; check the data's scale and the model"
        )
    tau_min = float(min(ref_losses.min(), held_losses.min()))
    if threshold is not None:
        tau_op, tau_src = float(threshold), "--threshold"
    else:
        tau_op = float(np.quantile(held_losses, 1.0 - fpr, method="higher"))
        tau_src = f"{1 - fpr:.4g} quantile of held-out normal losses (--fpr {fpr:g})"
    with torch.no_grad():
        held_d, _ = NearestNeighbours(reference).query(heldout)
    held_d = held_d.double().cpu().numpy()
    scale = float(np.quantile(held_d, SCALE_QUANTILE))
    if not scale > 0:
        nonzero = held_d[held_d > 0]
        if not len(nonzero):
            raise InputError(
                "the normal data has no spread: every held-out sample duplicates a reference sample "
                "(distance scale s = 0), so no distance can be called far; give varied normal data"
            )
        scale = float(np.median(nonzero))
        log.warning(
            "over 99 %% of held-out samples duplicate a reference sample; s is the median non-zero distance, %.3g",
            scale,
        )
    if min_distance is not None:
        delta, delta_src = float(min_distance), "--min-distance"
    else:
        delta, delta_src = DEFAULT_FAR_MULTIPLE * scale, f"{DEFAULT_FAR_MULTIPLE:g} × s (default)"
    return Baseline(
        reference=reference,
        heldout=heldout,
        heldout_losses=held_losses,
        tau_min=tau_min,
        tau_op=tau_op,
        tau_op_source=tau_src,
        scale=scale,
        min_distance=delta,
        min_distance_source=delta_src,
        domain=domain,
        fpr=fpr,
        neighbours=NearestNeighbours(torch.cat([reference, heldout])),
        normal_rows=np.concatenate([ref_idx, held_idx]),
    )
