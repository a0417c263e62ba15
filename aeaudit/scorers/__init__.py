"""Anomaly scores. One file per method over one protocol; this registry names them for ``--scorers``."""
from __future__ import annotations

import inspect

from ..errors import InputError
from .base import Scorer
from .energy import EnergyScorer
from .gradcon import GradConScorer
from .recon import ReconstructionScorer
from .toll import TollScorer

SCORERS: dict[str, type[Scorer]] = {
    ReconstructionScorer.name: ReconstructionScorer,
    GradConScorer.name: GradConScorer,
    TollScorer.name: TollScorer,
    EnergyScorer.name: EnergyScorer,
}
DEFAULT_SCORERS: tuple[str, ...] = ("recon",)


def make_scorer(name: str, settings: dict | None = None) -> Scorer:
    """Instantiate a registered scorer. ``settings`` may hold flat keys every scorer may take and,
    under the scorer's name, a dict of its own (``{"toll": {"beta": 10}}``), which wins."""
    try:
        cls = SCORERS[name]
    except KeyError:
        raise InputError(f"--scorers: unknown scorer {name!r}; choose from {', '.join(SCORERS)}") from None
    settings = settings or {}
    own = settings.get(name)
    merged = {**{k: v for k, v in settings.items() if k not in SCORERS}, **(own if isinstance(own, dict) else {})}
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in merged.items() if k in accepted and k != "self" and v is not None})


__all__ = ["DEFAULT_SCORERS", "SCORERS", "Scorer", "make_scorer"]
