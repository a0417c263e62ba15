"""Checks and searches. One file per probe; this registry names them for ``--probes``."""

from __future__ import annotations

from ..effort import DEFAULT_EFFORT
from ..errors import InputError
from ..settings import constructor_kwargs
from .affine import AffineCheck
from .base import Objective, Probe, ProbeContext, ProbeResult
from .certify import Certify
from .far_field import FarField
from .latent_grid import LatentGrid
from .pca_reference import PCAReference
from .pgd import InputPGD, LatentPGD
from .random_search import RandomSearch

PROBES: dict[str, type[Probe]] = {
    PCAReference.name: PCAReference,
    AffineCheck.name: AffineCheck,
    FarField.name: FarField,
    LatentGrid.name: LatentGrid,
    LatentPGD.name: LatentPGD,
    InputPGD.name: InputPGD,
    RandomSearch.name: RandomSearch,
    Certify.name: Certify,  # last: the searches' findings seed its branch and bound
}
DEFAULT_PROBES: tuple[str, ...] = tuple(PROBES)


def make_probe(name: str, settings: dict | None = None, effort: str = DEFAULT_EFFORT) -> Probe:
    """Instantiate a registered probe at ``effort`` (its preset), overridden by ``settings``: flat keys
    any probe may take and, under a probe's name, a dict of its own, which wins (see :mod:`aeaudit.settings`)."""
    try:
        cls = PROBES[name]
    except KeyError:
        raise InputError(f"--probes: unknown probe {name!r}; choose from {', '.join(PROBES)}") from None
    return cls(**{**cls.effort_presets.get(effort, {}), **constructor_kwargs(name, cls, settings, PROBES)})


__all__ = ["DEFAULT_PROBES", "PROBES", "Objective", "Probe", "ProbeContext", "ProbeResult", "make_probe"]
