"""Loading autoencoders of every supported format into one finished adapter."""

from .adapter import AutoencoderAdapter, Standardizer
from .architecture import build_architecture
from .inventory import ModelCard
from .loading import LoadOptions, RawModel, bind, load_model, open_model, read_model, resolve_device

__all__ = [
    "AutoencoderAdapter",
    "LoadOptions",
    "ModelCard",
    "RawModel",
    "Standardizer",
    "bind",
    "build_architecture",
    "load_model",
    "open_model",
    "read_model",
    "resolve_device",
]
