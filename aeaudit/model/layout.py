"""The layouts a model works in: the data's per-sample shape, the encoder's own input shape, the
decoder's own output shape.

The most common hand-written MNIST autoencoder flattens inside ``forward`` (``x.view(-1, 784)``),
runs ``encoder``/``decoder`` MLPs and unflattens the result (``decoded.view(-1, 1, 28, 28)``). Its
first layer says ``784``, its data says ``(1, 28, 28)``, and its halves each speak their own layout.
Here the data's own shape is kept when the model accepts it, an output with as many values as the
input is read as the reconstruction in the input's layout, and the encoder/decoder are wrapped with
the flatten before and the unflatten after that they need, so that the latent checks can run.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import torch
from torch import nn

from .adapter import AutoencoderAdapter, Standardizer, resolve_path

log = logging.getLogger(__name__)


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor) else out


def accepts(module: nn.Module, x: torch.Tensor) -> bool:
    """``module`` runs on ``x`` and returns as many values per sample as it was given."""
    try:
        with torch.no_grad():
            out = _first(module(x))
    except Exception:
        return False
    return (
        isinstance(out, torch.Tensor)
        and out.dim() >= 1
        and out.shape[0] == x.shape[0]
        and out[0].numel() == x[0].numel()
    )


def data_shape_fits(module: nn.Module, preprocess: Standardizer | None, sample: torch.Tensor) -> bool:
    """Whether ``module`` takes the data in its own per-sample shape (``sample``: data space, on the
    model's device and dtype) and gives back as many values."""
    x = preprocess.forward(sample) if preprocess is not None else sample
    return sample.dim() > 1 and accepts(module, x)


class Relayout(nn.Module):
    """The model in the data's layout: ``forward`` returns the reconstruction shaped as its input;
    ``encode`` flattens (or reshapes) to the encoder's own input shape, ``decode`` shapes the decoder's
    output as the data. The wrapped model stays reachable as ``model``."""

    def __init__(
        self,
        model: nn.Module,
        sample_shape: tuple[int, ...],
        encoder_path: str | None = None,
        decoder_path: str | None = None,
        encoder_input: tuple[int, ...] | None = None,
    ):
        super().__init__()
        self.model = model
        self.sample_shape = tuple(sample_shape)
        self.encoder_path, self.decoder_path = encoder_path, decoder_path
        self.encoder_input = encoder_input

    def forward(self, x: torch.Tensor):
        out = self.model(x)
        if isinstance(out, torch.Tensor):
            return out.reshape(x.shape)
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            return (out[0].reshape(x.shape), *out[1:])
        return out

    def encode(self, x: torch.Tensor):
        encoder = resolve_path(self.model, self.encoder_path)
        return encoder(x if self.encoder_input is None else x.reshape(x.shape[0], *self.encoder_input))

    def decode(self, z: torch.Tensor):
        out = resolve_path(self.model, self.decoder_path)(z)
        return out.reshape(out.shape[0], *self.sample_shape)


def unwrap_layout(module: nn.Module) -> nn.Module:
    """The user's own model inside a :class:`Relayout` (what is saved back to disk)."""
    return module.model if isinstance(module, Relayout) else module


def _encoder_input(encoder, x: torch.Tensor) -> tuple[int, ...] | None | bool:
    """``None``: the encoder takes ``x`` as it is; a shape: it takes ``x`` flattened to it; ``False``: neither."""
    for shape in (None, (x[0].numel(),)):
        try:
            with torch.no_grad():
                encoder(x if shape is None else x.reshape(x.shape[0], *shape))
        except Exception:
            continue
        return shape
    return False


def fit_layout(adapter: AutoencoderAdapter, x: torch.Tensor) -> AutoencoderAdapter:
    """The adapter with its model wrapped in :class:`Relayout` when its output or its halves use another
    layout than the model-space batch ``x``; the adapter itself otherwise."""
    module, shape = adapter.module, tuple(x.shape[1:])
    try:
        with torch.no_grad():
            out = _first(module(x))
    except Exception:
        return adapter  # settling reports the failure with its own message
    reshape_output = isinstance(out, torch.Tensor) and tuple(out.shape) != tuple(x.shape) and out.numel() == x.numel()
    enc_path, dec_path = adapter.encoder_path, adapter.decoder_path
    encoder_input, reshape_halves = None, False
    if enc_path and dec_path:
        found = _encoder_input(adapter.encoder, x)
        if found is not False:
            encoder_input = found
            try:
                with torch.no_grad():
                    z = _first(adapter.encoder(x if found is None else x.reshape(x.shape[0], *found)))
                    decoded = adapter.decoder(z)
                reshape_halves = found is not None or (
                    isinstance(decoded, torch.Tensor)
                    and tuple(decoded.shape[1:]) != shape
                    and decoded[0].numel() == math.prod(shape)
                )
            except Exception:
                reshape_halves = False
    if not (reshape_output or reshape_halves):
        return adapter
    wrapped = Relayout(
        module, shape, enc_path if reshape_halves else None, dec_path if reshape_halves else None, encoder_input
    )
    notes = []
    if reshape_output:
        notes.append(f"output of shape {tuple(out.shape[1:])} read as the reconstruction in the input's layout {shape}")
    if reshape_halves:
        paths = ("encode", "decode")
        if encoder_input is not None:
            notes.append(f"the encoder {enc_path} takes its input flattened to {encoder_input}")
        notes.append(f"the decoder {dec_path}'s output is shaped as the input {shape}")
    else:
        paths = (f"model.{enc_path}", f"model.{dec_path}") if enc_path and dec_path else (None, None)
    log.info("layout: %s", "; ".join(notes))
    adapter.card.notes.extend(notes)
    return replace(adapter, module=wrapped, encoder_path=paths[0], decoder_path=paths[1])
