"""Checks and searches. One file per probe; this registry names them for ``--probes``."""
from __future__ import annotations

from ..errors import InputError
from .affine import AffineCheck
from .base import Objective, Probe, ProbeContext, ProbeResult
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
}
DEFAULT_PROBES: tuple[str, ...] = ("pca-reference", "affine", "far-field", "grid", "pgd-latent", "pgd-input", "random")


def make_probe(name: str, settings: dict | None = None) -> Probe:
    """Instantiate a registered probe; ``settings`` holds scan-wide options a probe may take
    (only the keyword arguments its ``__init__`` accepts are passed)."""
    try:
        cls = PROBES[name]
    except KeyError:
        raise InputError(f"--probes: unknown probe {name!r}; choose from {', '.join(PROBES)}") from None
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in (settings or {}).items() if k in accepted and v is not None}
    return cls(**kwargs)


__all__ = ["DEFAULT_PROBES", "PROBES", "Objective", "Probe", "ProbeContext", "ProbeResult", "make_probe"]
