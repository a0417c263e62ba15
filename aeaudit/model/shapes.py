"""Shapes settled on a data sample: the input shape a model takes, its output and latent shapes,
and whether its encoder/decoder split reproduces its forward."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InputError, one_line
from .adapter import AutoencoderAdapter, resolve_path
from .formats import MeanPath
from .layout import fit_layout


def guess_input_shape(module: nn.Module) -> tuple[int, ...] | None:
    """The input width of a model whose first layer is linear (TorchScript keeps the class name in
    ``original_name``); ``None`` when the first layer is a convolution, whose spatial size comes from the data."""
    for sub in module.modules():
        kind = getattr(sub, "original_name", None) or type(sub).__name__
        if kind == "Linear":
            return (int(sub.weight.shape[1]),)
        if kind in ("Conv1d", "Conv2d", "Conv3d"):
            return None
    return None


def conv_input_shape(module: nn.Module, per_sample: tuple[int, ...]) -> tuple[int, ...] | None:
    """For samples without a channel axis (``(784,)``, ``(28, 28)``) and a model whose first layer is a
    convolution, the one shape that fits: ``(C, L)`` for Conv1d, ``(C, S, S)`` for Conv2d when
    ``n / C`` is a perfect square; ``None`` when the samples already have the channel axis or nothing fits."""
    n = math.prod(per_sample)
    for sub in module.modules():
        kind = getattr(sub, "original_name", None) or type(sub).__name__
        if kind == "Linear":
            return None
        if kind in ("Conv1d", "Conv2d"):
            spatial = 1 if kind == "Conv1d" else 2
            channels = int(sub.weight.shape[1]) * int(getattr(sub, "groups", 1))
            if len(per_sample) == spatial + 1 or n % channels:
                return None
            if spatial == 1:
                return (channels, n // channels)
            side = math.isqrt(n // channels)
            return (channels, side, side) if side * side * channels == n else None
    return None


def _use_mean_path(adapter: AutoencoderAdapter) -> None:
    """A forward that samples (a VAE) gives a different loss on every call, so findings could not be
    re-verified: score ``decode(mean of encode(x))`` instead, or refuse when there is no such path."""
    module = adapter.module
    if isinstance(module, MeanPath) or not (callable(getattr(module, "encode", None))
                                             and callable(getattr(module, "decode", None))):
        raise InputError("the model's forward is random (two calls on the same input differ) and it has no "
                         "encode()/decode() methods for a deterministic mean path; aeaudit needs a repeatable reconstruction")
    adapter.module = MeanPath(module)
    adapter.output_index = None
    adapter._encoder_path, adapter._decoder_path = "encode", "decode"
    adapter.encoder, adapter.decoder = adapter.module.encode, adapter.module.decode
    adapter.card.encoder, adapter.card.decoder = "encode", "decode"
    adapter.card.notes.append("forward() samples (a VAE): scored deterministically as decode(mean of encode(x))")


def finalize_shapes(adapter: AutoencoderAdapter, sample: torch.Tensor) -> None:
    """Check the model on a data sample: output shape must equal input shape; find the latent shape.

    Drops an encoder/decoder split that does not reproduce ``forward`` (with the reason).
    """
    x = sample[:2].to(adapter.device, adapter.dtype)
    fit_layout(adapter, adapter._to_model_space(x))
    try:
        with torch.no_grad():
            xm, rec = adapter.reconstruct_model_space(x)
            if isinstance(rec, (tuple, list)):
                adapter.output_index = 0
                rec = rec[0]
    except Exception as exc:
        raise InputError(f"the model fails on data of shape {tuple(x.shape[1:])}: {one_line(exc)}; "
                         "check --input-shape") from None
    if not isinstance(rec, torch.Tensor) or tuple(rec.shape) != tuple(xm.shape):
        got = tuple(rec.shape[1:]) if isinstance(rec, torch.Tensor) else type(rec).__name__
        raise InputError(f"the model's output shape {got} differs from its input shape {tuple(xm.shape[1:])}: "
                         "aeaudit audits autoencoders, whose output reconstructs the input")
    with torch.no_grad():
        _, again = adapter.reconstruct_model_space(x)
    if not torch.allclose(rec, again, rtol=1e-5, atol=1e-6):
        _use_mean_path(adapter)
        with torch.no_grad():
            _, rec = adapter.reconstruct_model_space(x)
    adapter.card.input_shape = list(adapter.input_shape)
    if adapter.has_latent:
        try:
            with torch.no_grad():
                z = adapter.encoder(xm)
                if isinstance(z, (tuple, list)):  # VAE-style encoders: take the mean
                    path = adapter._encoder_path
                    adapter._encoder_path = f"{path}[0]"
                    adapter.encoder = resolve_path(adapter.module, adapter._encoder_path)
                    z = z[0]
                again = adapter.decoder(z)
            ok = tuple(again.shape) == tuple(rec.shape) and torch.allclose(again, rec, rtol=1e-4, atol=1e-5)
        except Exception as exc:
            ok, why = False, one_line(exc)
        else:
            why = "decoder(encoder(x)) differs from forward(x)"
        if ok:
            adapter.latent_shape = tuple(z.shape[1:])
            adapter.card.latent_shape = list(adapter.latent_shape)
        else:
            adapter.split_reason = f"encoder/decoder split {adapter._encoder_path}/{adapter._decoder_path} rejected: {why}"
            adapter.encoder = adapter.decoder = None
            adapter._encoder_path = adapter._decoder_path = None
            adapter.card.encoder = adapter.card.decoder = None
    if not adapter.has_latent:
        adapter.card.notes.append(f"latent checks skipped: {adapter.split_reason}")
