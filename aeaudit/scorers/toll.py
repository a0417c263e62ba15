"""Toll: the targeted-collapse method of "Targeted collapse regularized autoencoder for anomaly
detection: black hole at the center" — its score, its training loss and its checkpoint key.

``S(x) = ||x̂ − x||₂ + β · ||z||₂`` with plain (unsquared) norms of the flattened tensors, in the
model's input space. The paper trains with the same expression as its loss (batch mean), which
pulls normal codes towards the origin; a code far out then scores high even when it reconstructs
well. β is saved with a model trained this way (``toll_beta``), because the score needs it.

On a model trained *without* the penalty the score is post hoc: its codes sit wherever training
left them, and β has no trained value. Unless β is given, it is then set so that the two terms
have equal medians on the normal reference data: ``β = median ||x̂ − x||₂ / median ||z||₂``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import InputError
from ..model.adapter import AutoencoderAdapter
from .base import Scorer, TrainingObjective

BETA_KEY = "toll_beta"


def toll_terms(adapter: AutoencoderAdapter, xm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(||x̂ − x||₂, ||z||₂)`` per sample of a model-space batch."""
    z = adapter.encoder(xm)
    rec = adapter.decoder(z)
    n = xm.shape[0]
    return (rec - xm).reshape(n, -1).norm(dim=1), z.reshape(n, -1).norm(dim=1)


def toll_loss(adapter: AutoencoderAdapter, xm: torch.Tensor, beta: float) -> torch.Tensor:
    """Toll's per-sample expression, the score and the training loss alike."""
    rec, lat = toll_terms(adapter, xm)
    return rec + beta * lat


@dataclass(eq=False)
class TollScorer(Scorer):
    """Toll's score ``||x̂ − x||₂ + β||z||₂``.

    Args:
        beta: latent-norm weight; ``None`` = the checkpoint's ``toll_beta`` if present, else the
            post-hoc equal-medians rule.
        fit_batch_size: batch size while fitting.
    """

    name: ClassVar[str] = "toll"
    differentiable: ClassVar[bool] = True
    description: ClassVar[str] = "Toll: reconstruction distance + β × latent norm (targeted collapse)"
    checkpoint_keys: ClassVar[tuple[str, ...]] = (BETA_KEY,)
    training_parameters: ClassVar[tuple[str, ...]] = ("beta",)

    beta: float | None = None
    fit_batch_size: int = 1024

    def __post_init__(self) -> None:
        if self.beta is not None and not (math.isfinite(self.beta) and self.beta >= 0):
            raise InputError(f"toll: beta = {self.beta!r} must be a finite number ≥ 0")

    def skip_reason(self, adapter: AutoencoderAdapter) -> str | None:
        if not adapter.has_latent:
            return f"needs the latent code z: {adapter.split_reason}"
        return None

    def _fit(self, adapter: AutoencoderAdapter, reference: torch.Tensor, heldout: torch.Tensor) -> None:
        trained = adapter.checkpoint_extras.get(BETA_KEY)
        if trained is not None:
            try:
                trained = float(trained)
            except (TypeError, ValueError):
                raise InputError(f"checkpoint key {BETA_KEY!r} must be a number, got {trained!r}") from None
        if self.beta is not None:
            self.beta_ = float(self.beta)
            self.posthoc = trained is None
            self.note_ = f"β = {self.beta_:.4g} (given)" + (
                "; post-hoc: the model was not trained with Toll's penalty" if self.posthoc else ""
            )
        elif trained is not None:
            self.beta_ = trained
            self.note_ = f"β = {trained:.4g} from the checkpoint ({BETA_KEY})"
        else:
            with torch.no_grad():
                terms = [
                    toll_terms(
                        adapter,
                        adapter.to_model_space(
                            reference[i : i + self.fit_batch_size].to(adapter.device, adapter.dtype)
                        ),
                    )
                    for i in range(0, reference.shape[0], self.fit_batch_size)
                ]
            rec = torch.cat([t[0] for t in terms]).double().quantile(0.5).item()
            lat = torch.cat([t[1] for t in terms]).double().quantile(0.5).item()
            self.beta_ = rec / lat if lat > 0 else 0.0
            self.posthoc = True
            self.note_ = (
                f"post-hoc: β = {self.beta_:.4g} equalises the median reconstruction distance and the "
                "median latent norm on normal data (the model was not trained with Toll's penalty)"
            )
        if not math.isfinite(self.beta_) or self.beta_ < 0:
            raise InputError(f"toll β = {self.beta_}: must be a finite number ≥ 0")

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return toll_loss(self.adapter_, self.adapter_.to_model_space(x), self.beta_)

    @classmethod
    def training_objective(cls, adapter: AutoencoderAdapter, beta: float = 10.0, **_: Any) -> TollObjective:
        if not adapter.has_latent:
            raise InputError(
                f"--method toll penalises the latent code and needs the encoder/decoder split: {adapter.split_reason}"
            )
        return TollObjective(adapter, beta)


class TollObjective(TrainingObjective):
    """Toll's training loss: the batch mean of :func:`toll_loss`; selection on the same loss held out."""

    selection = "lowest held-out Toll loss on normal data"

    def __init__(self, adapter: AutoencoderAdapter, beta: float):
        super().__init__(adapter)
        self.beta = beta

    def loss(self, xm: torch.Tensor) -> torch.Tensor:
        return toll_loss(self.adapter, xm, self.beta).mean()

    @torch.no_grad()
    def heldout(self, xm: torch.Tensor, batch_size: int) -> float:
        total = sum(
            float(toll_loss(self.adapter, xm[i : i + batch_size], self.beta).sum())
            for i in range(0, xm.shape[0], batch_size)
        )
        return total / xm.shape[0]

    def checkpoint_extras(self, snapshot: Any) -> dict[str, Any]:
        return {BETA_KEY: float(self.beta)}
