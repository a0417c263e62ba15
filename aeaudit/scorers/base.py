"""One protocol for every anomaly score (scikit-learn / PyOD conventions), and for the training
objective of the methods that also retrain a model (``aeaudit harden``).

A scorer is a dataclass whose fields are its parameters. ``fit(adapter, reference, heldout, fpr)``
learns what the score needs from the normal reference data (attributes ending in ``_``) and
calibrates on the held-out part: ``threshold_`` is the ``1 − fpr`` quantile of held-out scores,
``min_normal_`` the smallest score of any normal sample (reference and held-out: the score's
``τ_min``, defined as the reconstruction loss's is). ``score(x)`` returns ``[N]``, higher = more anomalous.

A method that retrains models (Toll, GradCon) keeps its score, its training objective and the
checkpoint keys it saves in its own module; ``harden`` reaches it through the registry.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import InputError
from ..model.adapter import AutoencoderAdapter


@dataclass(frozen=True)
class SearchObjective:
    """What an adaptive search minimises to attack a score: a differentiable score function with
    the thresholds it is normalised by (the score itself, or a stated surrogate calibrated on its own)."""

    score: Callable[[torch.Tensor], torch.Tensor]
    tau_min: float
    tau_op: float
    differentiable: bool
    note: str = ""


@dataclass(eq=False)
class Scorer(ABC):
    name: ClassVar[str] = "scorer"
    differentiable: ClassVar[bool] = True
    description: ClassVar[str] = ""
    checkpoint_keys: ClassVar[tuple[str, ...]] = ()  # what a model trained with this method carries
    needs_gradients: ClassVar[bool] = False  # True: the score differentiates the model itself
    training_parameters: ClassVar[tuple[str, ...]] = ()  # harden's settings this method's objective takes

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def skip_reason(self, adapter: AutoencoderAdapter) -> str | None:
        """Why this score cannot apply to ``adapter`` (e.g. it needs a latent code), or ``None``."""
        if self.needs_gradients and not adapter.card.differentiable:
            return "needs gradients through the model, which runs without them here (onnxruntime)"
        return None

    def fit(self, adapter: AutoencoderAdapter, reference: torch.Tensor, heldout: torch.Tensor, fpr: float) -> Scorer:
        """Fit on ``reference``, calibrate ``threshold_`` on ``heldout`` at ``fpr``, and set ``min_normal_``."""
        self.adapter_ = adapter
        self.fpr_ = fpr
        self.posthoc = False  # True when the model was not trained for this score
        self._fit(adapter, reference, heldout)
        held = self.score_batched(heldout).double().cpu().numpy()
        ref = self.score_batched(reference).double().cpu().numpy()
        if not (np.isfinite(held).all() and np.isfinite(ref).all()):
            raise InputError(f"scorer {self.name}: its score is NaN or inf on normal data; check its settings")
        self.heldout_scores_ = held
        self.threshold_ = float(np.quantile(held, 1.0 - fpr, method="higher"))
        self.min_normal_ = float(min(held.min(), ref.min()))
        return self

    def _fit(self, adapter: AutoencoderAdapter, reference: torch.Tensor, heldout: torch.Tensor) -> None:  # noqa: B027
        """Learn from normal data; nothing to learn by default."""

    @abstractmethod
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample anomaly score ``[N]`` on the adapter's device (higher = more anomalous)."""

    def score_batched(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        outs = []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size].to(self.adapter_.device, self.adapter_.dtype)
            if self.differentiable:
                outs.append(self.score(xb).detach())
            else:
                with torch.no_grad():
                    outs.append(self.score(xb))
        return torch.cat(outs) if outs else torch.empty(0)

    def search_objective(self) -> SearchObjective:
        """What an adaptive search against this score minimises; the score itself by default."""
        return SearchObjective(self.score, self.min_normal_, self.threshold_, self.differentiable)

    def rebind(self, adapter: AutoencoderAdapter) -> Scorer:
        """The same fitted scorer on another adapter (e.g. the float64 CPU copy used to verify).

        Fitted tensors are moved to the new adapter's device and dtype."""
        clone = type(self)(**self.params())
        for k, v in vars(self).items():
            if k.endswith("_") and k != "adapter_":
                setattr(clone, k, _move(v, adapter))
        clone.posthoc = getattr(self, "posthoc", False)
        clone.adapter_ = adapter
        return clone

    # ------------------------------------------------------------------ the method's training side
    @classmethod
    def trained_with(cls, extras: dict[str, Any]) -> bool:
        """Whether a checkpoint's extras say its model was trained with this method."""
        return bool(cls.checkpoint_keys) and any(k in extras for k in cls.checkpoint_keys)

    @classmethod
    def training_objective(cls, adapter: AutoencoderAdapter, **parameters: Any) -> TrainingObjective:
        raise InputError(f"{cls.name} is a score only: it has no training objective to harden a model with")


class TrainingObjective(ABC):
    """A method's training loss over model-space batches (``aeaudit harden``).

    ``heldout`` is the model-selection criterion on held-out normal data (lower is better);
    ``checkpoint_extras`` is what the hardened checkpoint must carry for the method's score."""

    selection: str = ""  # the selection criterion, in words

    def __init__(self, adapter: AutoencoderAdapter):
        self.adapter = adapter

    @abstractmethod
    def loss(self, xm: torch.Tensor) -> torch.Tensor:
        """The batch loss to minimise."""

    def after_backward(self) -> None:  # noqa: B027 - optional hook, a no-op for most methods
        """Hook after ``backward()`` of the total loss (GradCon updates its reference here)."""

    @abstractmethod
    def heldout(self, xm: torch.Tensor, batch_size: int) -> float:
        """The selection criterion on held-out normal data (lower is better)."""

    def snapshot(self) -> Any:
        """State to keep beside the best weights (GradCon: its reference gradients at that step)."""
        return None

    @abstractmethod
    def checkpoint_extras(self, snapshot: Any) -> dict[str, Any]:
        """The checkpoint keys this method's score reads, for the selected weights and ``snapshot``."""


def _move(value: Any, adapter: AutoencoderAdapter) -> Any:
    if isinstance(value, torch.nn.Module):
        return copy.deepcopy(value).to(adapter.device, adapter.dtype)
    if isinstance(value, torch.Tensor):
        return value.to(adapter.device, adapter.dtype if value.is_floating_point() else value.dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_move(v, adapter) for v in value)
    if isinstance(value, dict):
        return {k: _move(v, adapter) for k, v in value.items()}
    return value
