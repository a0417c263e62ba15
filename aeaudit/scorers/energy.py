"""Iterative energy-based projection: Dehaene et al., "Iterative energy-based projection on a normal
data manifold for anomaly localization" (ICLR 2020).

Each input is moved towards inputs the autoencoder reconstructs well by gradient descent on
``E(x_t) = L_r(x_t) + λ·||x_t − x_0||₁``, the gradient taken *through* the autoencoder and scaled
pixel-wise by the current reconstruction error: ``x_{t+1} = x_t − α·(∇E(x_t) ⊙ (x_t − f(x_t))²)``.
A sample stops once its loss falls below ``τ_min`` (the smallest normal loss, as in the paper).
All inputs of a batch advance together.

``L_r`` is half the sum of squared errors and the L1 term a sum over the features, so that ``α``
and ``λ`` act per pixel as in the paper (its autoencoder loss is a per-pixel sum; with the full
sum, without the ½, MNIST digits diverged); the stop test uses the adapter's own loss.
The paper scores pixels (the anomaly map ``|x_T − x_0|``) and defines no input-level score;
aeaudit's default is the mean L1 distance travelled, ``mean_j |x_T − x_0|_j`` (``output="distance"``),
or the final energy per feature (``output="energy"``); docs/scorers.md gives the measurement
behind the default. Everything runs in the model's input space.

For the adaptive search the score is differentiated through ``unroll_steps`` unrolled steps (no
stop test, so the map is smooth in ``x``): a stated surrogate of the full projection with its own
threshold, calibrated on the held-out normal data exactly as the full score's is, so that the search
normalises the surrogate by the surrogate's own scale. The audit's float64 verification then re-scores
every candidate with the full projection against the full score's threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..errors import InputError
from ..model.adapter import AutoencoderAdapter
from .base import Scorer, SearchObjective

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass
class Projection:
    """The result of projecting a batch: all tensors per input, in the model's input space."""

    x: torch.Tensor  # the projected inputs x_T
    anomaly_map: torch.Tensor  # |x_T − x_0|, shaped like the inputs
    energy: torch.Tensor  # E(x_T) per feature
    distance: torch.Tensor  # mean_j |x_T − x_0|_j
    loss: torch.Tensor  # the adapter's loss at x_T
    steps: torch.Tensor  # steps each input took before stopping


@dataclass(eq=False)
class EnergyScorer(Scorer):
    """Energy-projection score.

    Args:
        alpha: step size (paper: 0.5). With ``optimizer="adam"`` it is Adam's learning rate and
            wants to be far smaller (e.g. 0.01).
        lam: weight ``λ`` of the L1 proximity term (paper: 0.05).
        steps: maximum number of steps.
        optimizer: ``"sgd"`` (the paper's plain update) or ``"adam"`` (Adam on the modulated gradient).
        output: input-level score: ``"distance"`` (mean L1 travelled) or ``"energy"`` (final energy per feature).
        unroll_steps: steps differentiated through when the score's gradient is wanted.
        batch_size: inputs projected together.
    """

    name: ClassVar[str] = "energy"
    differentiable: ClassVar[bool] = True
    description: ClassVar[str] = "iterative energy-based projection (Dehaene et al., ICLR 2020)"
    needs_gradients: ClassVar[bool] = True

    alpha: float = 0.5
    lam: float = 0.05
    steps: int = 10
    optimizer: str = "sgd"
    output: str = "distance"
    unroll_steps: int = 5
    batch_size: int = 512

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise InputError(f"energy: optimizer {self.optimizer!r}: choose sgd or adam")
        if self.output not in ("distance", "energy"):
            raise InputError(f"energy: output {self.output!r}: choose distance or energy")
        if self.steps < 1 or self.unroll_steps < 1 or self.batch_size < 1:
            raise InputError(
                f"energy: steps {self.steps}, unroll_steps {self.unroll_steps} and batch_size "
                f"{self.batch_size} must be at least 1"
            )
        if not (np.isfinite(self.alpha) and self.alpha > 0 and np.isfinite(self.lam) and self.lam >= 0):
            raise InputError(f"energy: alpha {self.alpha!r} must be > 0 and lam {self.lam!r} ≥ 0 (finite)")

    def _fit(self, adapter: AutoencoderAdapter, reference: torch.Tensor, heldout: torch.Tensor) -> None:
        held_losses = adapter.losses(heldout)
        self.tau_min_ = float(torch.cat([adapter.losses(reference), held_losses]).min())
        held, ref = (
            torch.cat(
                [
                    self._surrogate(part[i : i + self.batch_size].to(adapter.device, adapter.dtype)).detach()
                    for i in range(0, part.shape[0], self.batch_size)
                ]
            )
            .double()
            .cpu()
            .numpy()
            for part in (heldout, reference)
        )
        self.surrogate_threshold_ = float(np.quantile(held, 1.0 - self.fpr_, method="higher"))
        self.surrogate_min_ = float(min(held.min(), ref.min()))
        self.note_ = (
            f"{self.steps} {self.optimizer} steps (α {self.alpha:g}, λ {self.lam:g}), "
            f"stop at τ_min; score = {'mean L1 distance travelled' if self.output == 'distance' else 'final energy'}; "
            f"adaptive search differentiates {self.unroll_steps} unrolled steps, normalised by their own "
            "held-out threshold"
        )

    # ----------------------------------------------------------------- the projection
    def _energy_terms(self, xt: torch.Tensor, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(E per sample, the adapter's loss, squared error per feature)`` at ``xt`` (model space)."""
        adapter = self.adapter_
        n = xt.shape[0]
        residual = xt - adapter.forward_model(xt)
        sq = residual.pow(2)
        energy = 0.5 * sq.reshape(n, -1).sum(dim=1) + self.lam * (xt - x0).reshape(n, -1).abs().sum(dim=1)
        return energy, adapter.loss_of_residual(residual), sq

    def project(
        self, x: torch.Tensor, steps: int | None = None, create_graph: bool = False, stop_at_tau_min: bool = True
    ) -> Projection:
        """Project a data-space batch. ``create_graph``: keep the graph to ``x``; ``stop_at_tau_min``
        False: every sample takes every step (the surrogate, smooth in ``x``).

        Plain steps backtrack: a step that raised a sample's energy (or made it non-finite) is undone
        and that sample's step size halved, so its energy never increases. Adam's steps are bounded
        by ``alpha`` per feature and are taken as they come."""
        steps = self.steps if steps is None else steps
        x0 = self.adapter_.to_model_space(x)
        if not create_graph:
            x0 = x0.detach()
        n = x0.shape[0]
        shape = (n, *([1] * (x0.dim() - 1)))
        rate = torch.full((n,), float(self.alpha), dtype=x0.dtype, device=x0.device)
        taken = torch.zeros(n, dtype=torch.long, device=x0.device)
        xt, prev, m, v = x0, None, None, None
        with torch.enable_grad():
            for t in range(1, steps + 2):  # the last pass only evaluates (and maybe undoes) the last step
                if not create_graph:
                    xt = xt.detach().requires_grad_(True)
                energy, loss, sq = self._energy_terms(xt, x0)
                update = None
                if t <= steps:
                    (grad,) = torch.autograd.grad(energy.sum(), xt, create_graph=create_graph)
                    update = grad * (sq if create_graph else sq.detach())
                if prev is not None and self.optimizer == "sgd":
                    worse = ~(energy.detach() <= prev[1].detach())  # NaN counts as worse
                    wb = worse.reshape(shape)
                    xt = torch.where(wb, prev[0], xt)
                    energy, loss = torch.where(worse, prev[1], energy), torch.where(worse, prev[2], loss)
                    update = torch.where(wb, prev[3], update) if update is not None else None
                    rate = torch.where(worse, rate / 2, rate)
                    taken -= (worse & prev[4]).long()
                if t > steps:
                    break
                active = loss.detach() > self.tau_min_ if stop_at_tau_min else torch.ones_like(loss, dtype=torch.bool)
                if not active.any():
                    break
                if self.optimizer == "adam":
                    m = (1 - ADAM_BETAS[0]) * update if m is None else ADAM_BETAS[0] * m + (1 - ADAM_BETAS[0]) * update
                    v = (
                        (1 - ADAM_BETAS[1]) * update**2
                        if v is None
                        else ADAM_BETAS[1] * v + (1 - ADAM_BETAS[1]) * update**2
                    )
                    update = (m / (1 - ADAM_BETAS[0] ** t)) / ((v / (1 - ADAM_BETAS[1] ** t)).sqrt() + ADAM_EPS)
                prev = (xt, energy, loss, update, active)
                xt = xt - (rate * active.to(rate.dtype)).reshape(shape) * update
                taken += active.long()
        if not create_graph:
            xt, energy, loss = xt.detach(), energy.detach(), loss.detach()
        moved = (xt - x0).abs()
        n_features = moved[0].numel() if n else 1
        return Projection(
            x=xt,
            anomaly_map=moved,
            energy=energy / n_features,
            distance=moved.reshape(n, -1).mean(dim=1),
            loss=loss,
            steps=taken,
        )

    def _value(self, p: Projection) -> torch.Tensor:
        return p.distance if self.output == "distance" else p.energy

    def _surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """The score over ``unroll_steps`` steps without the stop test, differentiable in ``x``."""
        return self._value(
            self.project(x, steps=self.unroll_steps, create_graph=x.requires_grad, stop_at_tau_min=False)
        )

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The full projection's score (never differentiated: the adaptive search uses the surrogate)."""
        outs = [
            self._value(self.project(x[i : i + self.batch_size].detach())).detach()
            for i in range(0, x.shape[0], self.batch_size)
        ]
        return torch.cat(outs) if outs else torch.empty(0, device=x.device)

    def search_objective(self) -> SearchObjective:
        return SearchObjective(
            self._surrogate,
            self.surrogate_min_,
            self.surrogate_threshold_,
            True,
            f"surrogate: {self.unroll_steps} unrolled steps, its own held-out threshold",
        )
