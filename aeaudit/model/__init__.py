"""Loading autoencoders of every supported format into one adapter."""
from .adapter import AutoencoderAdapter, Standardizer
from .inventory import ModelCard
from .loading import LoadOptions, build_architecture, finalize_shapes, load_model, resolve_device

__all__ = ["AutoencoderAdapter", "LoadOptions", "ModelCard", "Standardizer", "build_architecture",
           "finalize_shapes", "load_model", "resolve_device"]
