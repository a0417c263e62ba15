"""One interface over every autoencoder aeaudit can load.

Everything downstream (baseline, probes, scorers) talks to :class:`AutoencoderAdapter`
only. Inputs and outputs of ``reconstruct`` / ``decode`` are in the *data space* of the
user's files; a model that standardises its inputs (PyOD) does so inside the adapter, and
the loss is measured where the model was trained: in its own input space.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .inventory import ModelCard


@dataclass
class Standardizer:
    """The model's own input preprocessing: ``(x - mean) / (std + eps)``."""

    mean: torch.Tensor
    std: torch.Tensor
    eps: float = 1e-8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / (self.std + self.eps)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.std + self.eps) + self.mean

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "Standardizer":
        return Standardizer(self.mean.to(device, dtype), self.std.to(device, dtype), self.eps)

    def describe(self) -> str:
        return f"standardise per feature with the model's stored mean/std (eps {self.eps:g})"


@dataclass
class AutoencoderAdapter:
    """A loaded autoencoder ``f = h ∘ g`` in eval mode on one device.

    Attributes
    ----------
    module: the full model; ``forward`` maps a model-space batch to its reconstruction.
    encoder, decoder: callables for ``g`` and ``h`` (model space), or ``None`` when the
        model has no usable split (``split_reason`` then says why).
    input_shape: per-sample input shape, without the batch dimension.
    latent_shape: per-sample latent shape, or ``None``.
    output_index: for modules returning tuples (VAEs), which element is the reconstruction.
    preprocess: the model's own input standardisation, or ``None``.
    loss_kind: ``"mse"`` (mean squared error per sample) or ``"pyod"`` (PyOD's Euclidean
        distance, used for scoring PyOD detectors the way PyOD does).
    """

    module: nn.Module
    input_shape: tuple[int, ...]
    card: ModelCard
    encoder: Callable[[torch.Tensor], torch.Tensor] | None = None
    decoder: Callable[[torch.Tensor], torch.Tensor] | None = None
    latent_shape: tuple[int, ...] | None = None
    output_index: int | None = None
    preprocess: Standardizer | None = None
    split_reason: str = ""
    loss_kind: str = "mse"
    _encoder_path: str | None = field(default=None, repr=False)
    _decoder_path: str | None = field(default=None, repr=False)
    checkpoint_extras: dict = field(default_factory=dict, repr=False)

    # ----------------------------------------------------------------- properties
    @property
    def has_latent(self) -> bool:
        return self.encoder is not None and self.decoder is not None

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        for b in self.module.buffers():
            return b.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.module.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    @property
    def n_features(self) -> int:
        n = 1
        for s in self.input_shape:
            n *= s
        return n

    # ----------------------------------------------------------------- model-space maps
    def _to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        return self.preprocess.forward(x) if self.preprocess is not None else x

    def _to_data_space(self, x: torch.Tensor) -> torch.Tensor:
        return self.preprocess.inverse(x) if self.preprocess is not None else x

    def _forward_model(self, xm: torch.Tensor) -> torch.Tensor:
        out = self.module(xm)
        if self.output_index is not None:
            out = out[self.output_index]
        return out

    def reconstruct_model_space(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x in model space, its reconstruction in model space)``."""
        xm = self._to_model_space(x)
        return xm, self._forward_model(xm)

    # ----------------------------------------------------------------- public API
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of a data-space batch, in data space."""
        _, rec = self.reconstruct_model_space(x)
        return self._to_data_space(rec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            raise RuntimeError(f"this model has no encoder/decoder split: {self.split_reason}")
        return self.encoder(self._to_model_space(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.decoder is None:
            raise RuntimeError(f"this model has no encoder/decoder split: {self.split_reason}")
        return self._to_data_space(self.decoder(z))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample reconstruction loss ``L_R`` (differentiable), shape ``[N]``.

        MSE over features in the model's input space; PyOD models use PyOD's own score,
        the Euclidean distance between standardised input and reconstruction.
        """
        xm, rec = self.reconstruct_model_space(x)
        diff = (xm - rec).reshape(x.shape[0], -1)
        if self.loss_kind == "pyod":
            return diff.pow(2).sum(dim=1).sqrt()
        return diff.pow(2).mean(dim=1)

    def loss_and_reconstruction(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xm, rec = self.reconstruct_model_space(x)
        diff = (xm - rec).reshape(x.shape[0], -1)
        loss = diff.pow(2).sum(dim=1).sqrt() if self.loss_kind == "pyod" else diff.pow(2).mean(dim=1)
        return loss, self._to_data_space(rec)

    @torch.no_grad()
    def batched(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Apply ``fn`` to ``x`` in batches on the adapter's device; results on that device."""
        outs = []
        for i in range(0, x.shape[0], batch_size):
            outs.append(fn(x[i : i + batch_size].to(self.device, self.dtype)))
        return torch.cat(outs) if outs else torch.empty(0, device=self.device)

    def losses(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Per-sample losses of a (possibly large) batch, no gradients."""
        return self.batched(self.loss, x, batch_size)

    # ----------------------------------------------------------------- copies
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "AutoencoderAdapter":
        """A copy on another device / dtype (the original is left untouched).

        Used to re-verify findings in float64 on the CPU. Raises ``RuntimeError`` when the
        model cannot be converted (some TorchScript / exported graphs hard-code a dtype).
        """
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        with warnings.catch_warnings():  # copying an exported graph trips torch-internal deprecation warnings
            warnings.simplefilter("ignore", FutureWarning)
            module = eval_mode(copy.deepcopy(self.module).to(device=device, dtype=dtype))
        enc, dec = _rebind_split(module, self._encoder_path, self._decoder_path, self.encoder, self.decoder)
        return AutoencoderAdapter(
            module=module,
            input_shape=self.input_shape,
            card=self.card,
            encoder=enc,
            decoder=dec,
            latent_shape=self.latent_shape,
            output_index=self.output_index,
            preprocess=self.preprocess.to(device, dtype) if self.preprocess is not None else None,
            split_reason=self.split_reason,
            loss_kind=self.loss_kind,
            _encoder_path=self._encoder_path,
            _decoder_path=self._decoder_path,
            checkpoint_extras=self.checkpoint_extras,
        )


def eval_mode(module: nn.Module) -> nn.Module:
    """``module.eval()``, except for ``torch.export`` programs, which refuse ``eval()``: their
    train/eval behaviour (dropout, batch norm) was fixed when they were exported."""
    try:
        return module.eval()
    except NotImplementedError:
        return module


def resolve_path(module: nn.Module, path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``"encoder"`` → ``module.encoder``; ``"encode"`` → bound method; dotted paths work.
    A path ending in ``[i]`` takes element ``i`` of the callable's (tuple) output (VAE means)."""
    index = None
    if path.endswith("]") and "[" in path:
        path, idx = path[:-1].split("[", 1)
        index = int(idx)
    obj = module
    for part in path.split("."):
        obj = getattr(obj, part)
    if index is None:
        return obj
    fn = obj
    return lambda t: fn(t)[index]


def _rebind_split(module, enc_path, dec_path, enc, dec):
    if enc is None or dec is None:
        return None, None
    if enc_path is None or dec_path is None:
        raise RuntimeError("cannot copy an adapter whose encoder/decoder were given as free callables")
    return resolve_path(module, enc_path), resolve_path(module, dec_path)
