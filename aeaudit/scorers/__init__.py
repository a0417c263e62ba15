"""Anomaly scores. One file per method over one protocol; this registry names them for ``--scorers``
and, for the methods that also train (Toll, GradCon), for ``aeaudit harden --method``."""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from ..settings import constructor_kwargs
from .base import Scorer, SearchObjective, TrainingObjective
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
DEFAULT_SCORERS: tuple[str, ...] = tuple(SCORERS)
HARDENING_METHODS: tuple[str, ...] = tuple(n for n, cls in SCORERS.items() if cls.training_parameters)


def make_scorer(name: str, settings: dict | None = None) -> Scorer:
    """Instantiate a registered scorer. ``settings``: flat keys any scorer may take and, under a
    scorer's name, a dict of its own (``{"toll": {"beta": 10}}``), which wins."""
    try:
        cls = SCORERS[name]
    except KeyError:
        raise InputError(f"--scorers: unknown scorer {name!r}; choose from {', '.join(SCORERS)}") from None
    return cls(**constructor_kwargs(name, cls, settings, SCORERS))


def trained_method(extras: dict[str, Any]) -> str | None:
    """The hardening method a checkpoint's extras name: ``aeaudit harden``'s metadata, else the first
    method whose checkpoint keys are present."""
    meta = extras.get("aeaudit")
    if isinstance(meta, dict) and meta.get("method") in HARDENING_METHODS:
        return meta["method"]
    return next((n for n in HARDENING_METHODS if SCORERS[n].trained_with(extras)), None)


__all__ = [
    "DEFAULT_SCORERS",
    "HARDENING_METHODS",
    "SCORERS",
    "Scorer",
    "SearchObjective",
    "TrainingObjective",
    "make_scorer",
    "trained_method",
]
