"""aeaudit: audit trained autoencoder anomaly detectors for blind spots.

Public API::

    import aeaudit
    result = aeaudit.scan("model.pt", "normal.npy", arch="mlp:2,5,1,5,2", seed=0)
    print(result.verdict, result.exit_code())
"""
__version__ = "0.1.0"

from .audit import AuditResult, scan  # noqa: E402
from .config import ScanConfig  # noqa: E402
from .data import load_data  # noqa: E402
from .errors import AeauditError, InputError, UntrustedCheckpointError  # noqa: E402
from .findings import Finding  # noqa: E402
from .model import AutoencoderAdapter, LoadOptions, load_model  # noqa: E402

__all__ = ["AeauditError", "AuditResult", "AutoencoderAdapter", "Finding", "InputError", "LoadOptions", "ScanConfig",
           "UntrustedCheckpointError", "__version__", "load_data", "load_model", "scan"]
