"""The normal latents and the latent box the latent-space searches cover.

The box is the normal latents' per-coordinate range, widened ``extent``× about its centre
(``--latent-extent``): wide enough to reach the out-of-bounds regions of Figure 2 in
"Autoencoders for anomaly detection are unreliable", bounded so a grid can cover it.
"""

from __future__ import annotations

import torch

from .base import ProbeContext


def normal_latents(ctx: ProbeContext) -> torch.Tensor:
    """Flattened latent codes ``[M, d]`` of the normal reference set, on the adapter's device."""
    adapter, ref = ctx.adapter, ctx.baseline.reference
    with torch.no_grad():
        return adapter.batched(adapter.encode, ref).reshape(ref.shape[0], -1)


def widen(lo, hi, extent: float):
    """The range ``[lo, hi]`` widened ``extent``× about its centre (tensors or arrays)."""
    centre, half = (lo + hi) / 2, (hi - lo) / 2 + 5e-7  # a collapsed coordinate keeps a non-empty range
    return centre - extent * half, centre + extent * half


def latent_box(ctx: ProbeContext, extent: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The normal latents and their range widened ``extent``× about its centre: ``(z, low, high)``."""
    z = normal_latents(ctx)
    lo, hi = widen(z.min(dim=0).values, z.max(dim=0).values, extent)
    return z, lo, hi


def decode_flat(ctx: ProbeContext, z: torch.Tensor) -> torch.Tensor:
    """Decode flattened latents ``[N, d]`` and project the result onto the input domain."""
    adapter = ctx.adapter
    return ctx.baseline.domain.project(adapter.decode(z.reshape(z.shape[0], *adapter.latent_shape)))
