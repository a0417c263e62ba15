"""One protocol for every anomaly score (scikit-learn / PyOD conventions).

``__init__`` stores parameters only; ``fit(adapter, reference)`` learns what the score needs
from normal data (attributes ending in ``_``); ``score(x)`` returns ``[N]`` with higher =
more anomalous; ``calibrate(heldout, fpr)`` sets ``threshold_`` (and ``min_normal_``, the
smallest normal score, the analogue of ``τ_min``).
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from ..model.adapter import AutoencoderAdapter


class Scorer(ABC):
    name: str = "scorer"
    differentiable: bool = True
    posthoc: bool = False  # True when the model was not trained for this score
    description: str = ""

    def get_params(self) -> dict[str, Any]:
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self" and hasattr(self, k)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    def skip_reason(self, adapter: AutoencoderAdapter) -> str | None:
        """Why this score cannot apply to ``adapter`` (e.g. it needs a latent code), or ``None``."""
        return None

    def fit(self, adapter: AutoencoderAdapter, reference: torch.Tensor) -> "Scorer":
        self.adapter_ = adapter
        self._fit(adapter, reference)
        return self

    def _fit(self, adapter: AutoencoderAdapter, reference: torch.Tensor) -> None:
        """Learn from normal reference data; nothing to learn by default."""

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

    def calibrate(self, heldout: torch.Tensor, fpr: float) -> "Scorer":
        s = self.score_batched(heldout).double().cpu().numpy()
        self.heldout_scores_ = s
        self.threshold_ = float(np.quantile(s, 1.0 - fpr, method="higher"))
        self.min_normal_ = float(s.min())
        return self

    def rebind(self, adapter: AutoencoderAdapter) -> "Scorer":
        """The same fitted scorer on another adapter (e.g. the float64 CPU copy used to verify).

        Fitted tensors are moved to the new adapter's device and dtype."""
        clone = type(self)(**self.get_params())
        for k, v in vars(self).items():
            if k.endswith("_") and k != "adapter_":
                setattr(clone, k, _move(v, adapter))
        clone.adapter_ = adapter
        return clone


def _move(value: Any, adapter: AutoencoderAdapter) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(adapter.device, adapter.dtype if value.is_floating_point() else value.dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_move(v, adapter) for v in value)
    if isinstance(value, dict):
        return {k: _move(v, adapter) for k, v in value.items()}
    return value
