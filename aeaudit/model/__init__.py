"""Loading autoencoders of every supported format into one adapter."""
from .adapter import AutoencoderAdapter, Standardizer
from .inventory import ModelCard
from .architecture import build_architecture
from .loading import LoadOptions, load_model, resolve_device
from .shapes import finalize_shapes

__all__ = ["AutoencoderAdapter", "LoadOptions", "ModelCard", "Standardizer", "build_architecture",
           "finalize_shapes", "load_model", "resolve_device"]
