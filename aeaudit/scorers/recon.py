"""The plain reconstruction score: per-sample MSE (PyOD models: PyOD's Euclidean distance)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import Scorer


@dataclass(eq=False)
class ReconstructionScorer(Scorer):
    """``L_R(x) = mean_j (x_j − f(x)_j)²`` in the model's input space — the score an autoencoder
    detector is usually deployed with. For PyOD detectors it is PyOD's own score,
    ``||x − f(x)||₂`` on standardised inputs, so thresholds match what PyOD reports."""

    name: ClassVar[str] = "recon"
    differentiable: ClassVar[bool] = True
    description: ClassVar[str] = "reconstruction error (what the detector ships with)"

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter_.loss(x)
