"""aeaudit: audit trained autoencoder anomaly detectors for blind spots.

Public API::

    import aeaudit
    result = aeaudit.scan("model.pt", "normal.npy", arch="mlp:2,5,1,5,2", seed=0, effort="quick")
    print(result.outcome, result.verdict, result.exit_code())

The names below are imported on first use, so ``aeaudit --help`` and ``--version`` do not wait
for torch to load.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "AuditResult": ".audit",
    "scan": ".audit",
    "ScanConfig": ".config",
    "load_data": ".data",
    "AeauditError": ".errors",
    "InputError": ".errors",
    "UntrustedCheckpointError": ".errors",
    "Finding": ".findings",
    "AutoencoderAdapter": ".model",
    "LoadOptions": ".model",
    "load_model": ".model",
    "Outcome": ".verdict",
    "harden": ".harden",
    "HardenSettings": ".harden",
    "compare": ".compare",
}
__all__ = sorted([*_PUBLIC, "__version__"])


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'aeaudit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
