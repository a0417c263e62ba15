"""Anomaly scores. One file per method over one protocol; this registry names them for ``--scorers``."""
from __future__ import annotations

import inspect

from ..errors import InputError
from .base import Scorer
from .recon import ReconstructionScorer

SCORERS: dict[str, type[Scorer]] = {
    ReconstructionScorer.name: ReconstructionScorer,
}
DEFAULT_SCORERS: tuple[str, ...] = ("recon",)


def make_scorer(name: str, settings: dict | None = None) -> Scorer:
    try:
        cls = SCORERS[name]
    except KeyError:
        raise InputError(f"--scorers: unknown scorer {name!r}; choose from {', '.join(SCORERS)}") from None
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in (settings or {}).items() if k in accepted and v is not None})


__all__ = ["DEFAULT_SCORERS", "SCORERS", "Scorer", "make_scorer"]
