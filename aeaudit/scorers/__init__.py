"""Anomaly scores. One file per method over one protocol; this registry names them for ``--scorers``."""
from __future__ import annotations

from ..errors import InputError
from ..settings import constructor_kwargs
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
    """Instantiate a registered scorer. ``settings``: flat keys any scorer may take and, under a
    scorer's name, a dict of its own (``{"toll": {"beta": 10}}``), which wins."""
    try:
        cls = SCORERS[name]
    except KeyError:
        raise InputError(f"--scorers: unknown scorer {name!r}; choose from {', '.join(SCORERS)}") from None
    return cls(**constructor_kwargs(name, cls, settings, SCORERS))


__all__ = ["DEFAULT_SCORERS", "SCORERS", "Scorer", "make_scorer"]
