"""One interface over every autoencoder aeaudit can load.

Everything downstream (baseline, probes, scorers, hardening) talks to :class:`AutoencoderAdapter`
only. An adapter is built finished by :func:`aeaudit.model.load_model` (shapes, output element and
encoder/decoder split settled on a data sample) and is never changed afterwards; :meth:`~AutoencoderAdapter.to`
makes a copy. Inputs and outputs of ``reconstruct`` / ``decode`` are in the *data space* of the
user's files; a model that standardises its inputs (PyOD) does so inside the adapter, and the loss
is measured where the model was trained: in its own input space.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from .inventory import ModelCard

LOSS_KINDS = ("mse", "pyod")


@dataclass(frozen=True)
class Standardizer:
    """The model's own input preprocessing: ``(x - mean) / (std + eps)``."""

    mean: torch.Tensor
    std: torch.Tensor
    eps: float = 1e-8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / (self.std + self.eps)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.std + self.eps) + self.mean

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Standardizer:
        return Standardizer(self.mean.to(device, dtype), self.std.to(device, dtype), self.eps)

    def describe(self) -> str:
        return f"standardise per feature with the model's stored mean/std (eps {self.eps:g})"


@dataclass(frozen=True)
class AutoencoderAdapter:
    """A loaded autoencoder ``f = h ∘ g`` in eval mode on one device.

    Attributes
    ----------
    module: the full model; ``forward`` maps a model-space batch to its reconstruction.
    input_shape: per-sample input shape, without the batch dimension.
    card: facts about the model for the report.
    encoder_path, decoder_path: attribute or method paths of ``g`` and ``h`` on ``module``
        (``"encoder"``, ``"net.down"``, ``"encode[0]"`` for the first output of a VAE's encode),
        or ``None`` when the model has no usable split (``split_reason`` then says why).
    latent_shape: per-sample latent shape, or ``None``.
    output_index: for modules returning tuples (VAEs), which element is the reconstruction.
    preprocess: the model's own input standardisation, or ``None``.
    loss_kind: ``"mse"`` (mean squared error per sample) or ``"pyod"`` (PyOD's Euclidean
        distance, used for scoring PyOD detectors the way PyOD does).
    checkpoint_extras: what the checkpoint stored beside the weights (scorer keys, metadata).
    """

    module: nn.Module
    input_shape: tuple[int, ...]
    card: ModelCard
    encoder_path: str | None = None
    decoder_path: str | None = None
    latent_shape: tuple[int, ...] | None = None
    output_index: int | None = None
    preprocess: Standardizer | None = None
    split_reason: str = ""
    loss_kind: str = "mse"
    checkpoint_extras: dict = field(default_factory=dict, repr=False)

    # ----------------------------------------------------------------- properties
    @property
    def encoder(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``g`` in model space, or ``None`` without a split."""
        return resolve_path(self.module, self.encoder_path) if self.encoder_path else None

    @property
    def decoder(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``h`` in model space, or ``None`` without a split."""
        return resolve_path(self.module, self.decoder_path) if self.decoder_path else None

    @property
    def has_latent(self) -> bool:
        return self.encoder_path is not None and self.decoder_path is not None and self.latent_shape is not None

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
        return math.prod(self.input_shape)

    # ----------------------------------------------------------------- model-space maps
    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        """A data-space batch as the model sees it (after its own preprocessing)."""
        return self.preprocess.forward(x) if self.preprocess is not None else x

    def to_data_space(self, x: torch.Tensor) -> torch.Tensor:
        return self.preprocess.inverse(x) if self.preprocess is not None else x

    def forward_model(self, xm: torch.Tensor) -> torch.Tensor:
        """``f`` on a model-space batch: the reconstruction, in model space."""
        out = self.module(xm)
        if self.output_index is not None:
            out = out[self.output_index]
        return out

    def reconstruct_model_space(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x in model space, its reconstruction in model space)``."""
        xm = self.to_model_space(x)
        return xm, self.forward_model(xm)

    # ----------------------------------------------------------------- the loss: the one place its kind matters
    def loss_of_residual(self, residual: torch.Tensor) -> torch.Tensor:
        """Per-sample loss from model-space residuals ``x_m − f(x_m)`` (any shape ``[N, ...]``):
        MSE over features, or for PyOD detectors PyOD's own score, the Euclidean norm."""
        sq = residual.reshape(residual.shape[0], -1).pow(2).sum(dim=1)
        return sq.sqrt() if self.loss_kind == "pyod" else sq / self.n_features

    def sq_threshold(self, tau: float) -> float:
        """The bound on the squared residual norm ``||r||²`` that corresponds to ``loss ≤ tau``."""
        return tau * tau if self.loss_kind == "pyod" else tau * self.n_features

    def loss_from_sq(self, sq: np.ndarray | float) -> np.ndarray | float:
        """The loss of a squared residual norm (the inverse of :meth:`sq_threshold`)."""
        return np.sqrt(sq) if self.loss_kind == "pyod" else np.asarray(sq) / self.n_features

    # ----------------------------------------------------------------- public API
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of a data-space batch, in data space."""
        _, rec = self.reconstruct_model_space(x)
        return self.to_data_space(rec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            raise RuntimeError(f"this model has no encoder/decoder split: {self.split_reason}")
        return self.encoder(self.to_model_space(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.decoder is None:
            raise RuntimeError(f"this model has no encoder/decoder split: {self.split_reason}")
        return self.to_data_space(self.decoder(z))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample reconstruction loss ``L_R`` (differentiable), shape ``[N]``."""
        xm, rec = self.reconstruct_model_space(x)
        return self.loss_of_residual(xm - rec)

    def loss_and_reconstruction(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xm, rec = self.reconstruct_model_space(x)
        return self.loss_of_residual(xm - rec), self.to_data_space(rec)

    @torch.no_grad()
    def batched(
        self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 1024
    ) -> torch.Tensor:
        """Apply ``fn`` to ``x`` in batches on the adapter's device; results on that device."""
        outs = []
        for i in range(0, x.shape[0], batch_size):
            outs.append(fn(x[i : i + batch_size].to(self.device, self.dtype)))
        return torch.cat(outs) if outs else torch.empty(0, device=self.device)

    def losses(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Per-sample losses of a (possibly large) batch, no gradients."""
        return self.batched(self.loss, x, batch_size)

    # ----------------------------------------------------------------- copies
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> AutoencoderAdapter:
        """A copy on another device / dtype (the original is left untouched).

        Used to re-verify findings in float64 on the CPU. Raises ``RuntimeError`` when the
        model cannot be converted (some TorchScript / exported graphs hard-code a dtype).
        """
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        with warnings.catch_warnings():  # copying an exported graph trips torch-internal deprecation warnings
            warnings.simplefilter("ignore", FutureWarning)
            module = eval_mode(copy.deepcopy(self.module).to(device=device, dtype=dtype))
        preprocess = self.preprocess.to(device, dtype) if self.preprocess is not None else None
        return replace(self, module=module, preprocess=preprocess)


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
