"""Build the bounded chains from a loaded :class:`~aeaudit.model.adapter.AutoencoderAdapter`.

Uses the adapter's public attributes only (``module``, ``encoder``, ``decoder``, ``preprocess``,
``loss_kind``, ``input_shape``, ``latent_shape``, ``loss``, ``decode``). Every chain is checked
against the adapter's own float64 loss on normal points before it is used, so a model whose
``forward`` is more than ``decoder(encoder(x))`` is refused instead of being certified wrongly.
"""

from __future__ import annotations

import torch

from .convert import CannotBound
from .network import Network, check_against, input_network, latent_network
from .ops import DTYPE


def _standardizer(adapter):
    p = adapter.preprocess
    return None if p is None else (p.mean.detach().cpu(), (p.std + p.eps).detach().cpu())


def input_network_for(adapter64, normal: torch.Tensor) -> Network:
    """The input-space chain of a float64 CPU adapter, checked on ``normal`` (data-space samples)."""
    parts = [adapter64.encoder, adapter64.decoder] if adapter64.has_latent else [adapter64.module]
    net = input_network(
        parts, adapter64.input_shape, standardizer=_standardizer(adapter64), loss_kind=adapter64.loss_kind
    )
    x = normal.detach().to("cpu", DTYPE)
    with torch.no_grad():
        loss = adapter64.loss(x.reshape(x.shape[0], *adapter64.input_shape))
    check_against(net, x.reshape(x.shape[0], -1), loss)
    return net


def latent_network_for(adapter64, latents: torch.Tensor, domain=None) -> Network:
    """The latent-map chain ``z ↦ loss(clamp(D(z)))``, checked on ``latents`` (e.g. normal codes).
    ``domain``: a :class:`~aeaudit.geometry.Domain`, or ``None`` (unbounded)."""
    if not adapter64.has_latent or adapter64.latent_shape is None:
        raise CannotBound(f"no latent map: {adapter64.split_reason or 'no encoder/decoder split or latent shape'}")
    bounded = domain is not None and domain.bounded
    net = latent_network(
        adapter64.encoder,
        adapter64.decoder,
        adapter64.latent_shape,
        standardizer=_standardizer(adapter64),
        loss_kind=adapter64.loss_kind,
        domain=(domain.low, domain.high) if bounded else None,
    )
    z = latents.detach().to("cpu", DTYPE)
    with torch.no_grad():
        a = adapter64.decode(z.reshape(z.shape[0], *adapter64.latent_shape))
        a = a.clamp(domain.low, domain.high) if bounded else a
        loss = adapter64.loss(a)
    check_against(net, z.reshape(z.shape[0], -1), loss, a)
    return net


def model_loss_for(adapter64):
    """The adapter's float64 loss of flat data-space points, for ``branch_and_bound(model_loss=...)``."""

    def loss(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return adapter64.loss(x.to(DTYPE).reshape(x.shape[0], *adapter64.input_shape))

    return loss
