"""Shapes settled on a data sample: the input shape a model takes, its output and latent shapes,
and whether its encoder/decoder split reproduces its forward."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from ..errors import InputError, one_line
from .adapter import AutoencoderAdapter
from .formats import MeanPath
from .layout import fit_layout


def _kind(module: nn.Module) -> str:
    # TorchScript modules keep the Python class name in ``original_name``.
    return getattr(module, "original_name", None) or type(module).__name__


def guess_input_shape(module: nn.Module) -> tuple[int, ...] | None:
    """The input width of a model whose first layer is linear; ``None`` when the first layer is a
    convolution, whose spatial size comes from the data."""
    for sub in module.modules():
        kind = _kind(sub)
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
        kind = _kind(sub)
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


def _output(adapter: AutoencoderAdapter, xm: torch.Tensor) -> tuple[torch.Tensor, int | None]:
    """The reconstruction of ``xm`` and which element of a tuple output it is (VAEs return several)."""
    try:
        with torch.no_grad():
            rec = adapter.module(xm)
    except Exception as exc:
        raise InputError(
            f"the model fails on data of shape {tuple(xm.shape[1:])}: {one_line(exc)}; check --input-shape"
        ) from None
    index = None
    if isinstance(rec, (tuple, list)):
        index, rec = 0, rec[0]
    if not isinstance(rec, torch.Tensor) or tuple(rec.shape) != tuple(xm.shape):
        got = tuple(rec.shape[1:]) if isinstance(rec, torch.Tensor) else type(rec).__name__
        raise InputError(
            f"the model's output shape {got} differs from its input shape {tuple(xm.shape[1:])}: "
            "aeaudit audits autoencoders, whose output reconstructs the input"
        )
    return rec, index


def _check_finite(rec: torch.Tensor) -> None:
    bad = ~torch.isfinite(rec.reshape(rec.shape[0], -1)).all(dim=1)
    if bad.any():
        raise InputError(
            f"the model's output is NaN or inf on normal sample {int(torch.nonzero(bad)[0])} of the first "
            f"{rec.shape[0]}: check the data's scale (the model's expected input range) and the checkpoint"
        )


def _mean_path(adapter: AutoencoderAdapter) -> AutoencoderAdapter:
    """A forward that samples (a VAE) gives a different loss on every call, so findings could not be
    re-verified: score ``decode(mean of encode(x))`` instead, or refuse when there is no such path."""
    module = adapter.module
    if isinstance(module, MeanPath) or not (
        callable(getattr(module, "encode", None)) and callable(getattr(module, "decode", None))
    ):
        raise InputError(
            "the model's forward is random (two calls on the same input differ) and it has no "
            "encode()/decode() methods for a deterministic mean path; aeaudit needs a repeatable reconstruction"
        )
    adapter.card.notes.append("forward() samples (a VAE): scored deterministically as decode(mean of encode(x))")
    return replace(adapter, module=MeanPath(module), output_index=None, encoder_path="encode", decoder_path="decode")


def settle(adapter: AutoencoderAdapter, sample: torch.Tensor) -> AutoencoderAdapter:
    """The finished adapter: ``adapter`` checked on a data sample (data space, any dtype).

    The output must have the input's shape and be finite; a forward that samples is replaced by the
    mean path; the latent shape is found, and an encoder/decoder split that does not reproduce
    ``forward`` is dropped (with the reason in ``split_reason`` and the model card)."""
    x = sample[:2].to(adapter.device, adapter.dtype)
    xm = adapter.to_model_space(x)
    adapter = fit_layout(adapter, xm)
    rec, index = _output(adapter, xm)
    _check_finite(rec)
    adapter = replace(adapter, output_index=index)
    with torch.no_grad():
        again = adapter.forward_model(xm)
    if not torch.allclose(rec, again, rtol=1e-5, atol=1e-6):
        adapter = _mean_path(adapter)
        with torch.no_grad():
            rec = adapter.forward_model(xm)
    adapter.card.input_shape = list(adapter.input_shape)
    if adapter.encoder_path and adapter.decoder_path:
        adapter = _settle_split(adapter, xm, rec)
    adapter.card.encoder, adapter.card.decoder = adapter.encoder_path, adapter.decoder_path
    adapter.card.latent_shape = list(adapter.latent_shape) if adapter.latent_shape else None
    if not adapter.has_latent:
        adapter.card.notes.append(f"latent checks skipped: {adapter.split_reason}")
    return adapter


def _settle_split(adapter: AutoencoderAdapter, xm: torch.Tensor, rec: torch.Tensor) -> AutoencoderAdapter:
    """The adapter with its latent shape, or with its split dropped when ``decoder(encoder(x))`` does
    not reproduce ``forward(x)``. VAE-style encoders that return ``(mean, …)`` use the mean."""
    try:
        with torch.no_grad():
            z = adapter.encoder(xm)
            if isinstance(z, (tuple, list)):
                adapter = replace(adapter, encoder_path=f"{adapter.encoder_path}[0]")
                z = z[0]
            again = adapter.decoder(z)
        ok = tuple(again.shape) == tuple(rec.shape) and torch.allclose(again, rec, rtol=1e-4, atol=1e-5)
        why = "decoder(encoder(x)) differs from forward(x)"
    except Exception as exc:
        ok, why = False, one_line(exc)
    if ok:
        return replace(adapter, latent_shape=tuple(z.shape[1:]))
    reason = f"encoder/decoder split {adapter.encoder_path}/{adapter.decoder_path} rejected: {why}"
    return replace(adapter, encoder_path=None, decoder_path=None, latent_shape=None, split_reason=reason)
