"""Toll: the targeted-collapse score of "Targeted collapse regularized autoencoder for anomaly
detection: black hole at the center".

``S(x) = ||x̂ − x||₂ + β · ||z||₂`` with plain (unsquared) norms of the flattened tensors, in the
model's input space. The paper trains with the same expression as its loss, which pulls normal
codes towards the origin; a code far out then scores high even when it reconstructs well.

On a model trained *without* the penalty the score is post hoc: its codes sit wherever training
left them, and β has no trained value. Unless β is given, it is then set so that the two terms
have equal medians on the normal reference data: ``β = median ||x̂ − x||₂ / median ||z||₂``.
"""
from __future__ import annotations

import math

import torch

from ..errors import InputError
from ..model.adapter import AutoencoderAdapter
from .base import Scorer

BETA_KEY = "toll_beta"


def toll_terms(adapter: AutoencoderAdapter, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(||x̂ − x||₂, ||z||₂)`` per sample, both in the model's input space."""
    xm = adapter._to_model_space(x)
    z = adapter.encoder(xm)
    rec = adapter.decoder(z)
    n = x.shape[0]
    return (rec - xm).reshape(n, -1).norm(dim=1), z.reshape(n, -1).norm(dim=1)


class TollScorer(Scorer):
    """Toll's score ``||x̂ − x||₂ + β||z||₂``.

    Args:
        beta: latent-norm weight; ``None`` = the checkpoint's ``toll_beta`` if present, else the
            post-hoc equal-medians rule.
        fit_batch_size: batch size while fitting.
    """

    name = "toll"
    differentiable = True
    description = "Toll: reconstruction distance + β × latent norm (targeted collapse)"

    def __init__(self, beta: float | None = None, fit_batch_size: int = 1024):
        self.beta = beta
        self.fit_batch_size = fit_batch_size

    def skip_reason(self, adapter: AutoencoderAdapter) -> str | None:
        if not adapter.has_latent:
            return f"needs the latent code z: {adapter.split_reason}"
        return None

    def _fit(self, adapter: AutoencoderAdapter, reference: torch.Tensor) -> None:
        trained = adapter.checkpoint_extras.get(BETA_KEY)
        if trained is not None:
            try:
                trained = float(trained)
            except (TypeError, ValueError):
                raise InputError(f"checkpoint key {BETA_KEY!r} must be a number, got {trained!r}") from None
        if self.beta is not None:
            self.beta_ = float(self.beta)
            self.posthoc = trained is None
            self.note_ = f"β = {self.beta_:.4g} (given)" + ("; post-hoc: the model was not trained with Toll's penalty"
                                                           if self.posthoc else "")
        elif trained is not None:
            self.beta_, self.posthoc = trained, False
            self.note_ = f"β = {trained:.4g} from the checkpoint ({BETA_KEY})"
        else:
            with torch.no_grad():
                terms = [toll_terms(adapter, reference[i : i + self.fit_batch_size].to(adapter.device, adapter.dtype))
                         for i in range(0, reference.shape[0], self.fit_batch_size)]
            rec = torch.cat([t[0] for t in terms]).double().quantile(0.5).item()
            lat = torch.cat([t[1] for t in terms]).double().quantile(0.5).item()
            self.beta_ = rec / lat if lat > 0 else 0.0
            self.posthoc = True
            self.note_ = (f"post-hoc: β = {self.beta_:.4g} equalises the median reconstruction distance and the "
                          "median latent norm on normal data (the model was not trained with Toll's penalty)")
        if not math.isfinite(self.beta_) or self.beta_ < 0:
            raise InputError(f"toll β = {self.beta_}: must be a finite number ≥ 0")

    def score(self, x: torch.Tensor) -> torch.Tensor:
        rec, lat = toll_terms(self.adapter_, x)
        return rec + self.beta_ * lat
