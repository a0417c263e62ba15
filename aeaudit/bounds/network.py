"""The chain whose residual is bounded: input space ``x ↦ x_m − f(x_m)``, latent space
``z ↦ a_m − f(a_m)`` with ``a = D(z)``.

A :class:`Network` is a flat list of operations with two marked positions (position ``k`` is the
input of operation ``k``; the last position is the chain's output):

* ``skip_pos``: the model-space input ``x_m`` of the autoencoder ``f``; the residual is
  ``r = value(skip_pos) − output``, the identity skip of the brief bounded as one network;
* ``point_pos``: the data-space point whose distance to the normal data counts (the input box
  itself in input space; the decoded, domain-clamped point in latent space).

The loss is the adapter's: ``"mse"`` = mean of ``r²`` over features, ``"pyod"`` = ``‖r‖₂``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .convert import CannotBound, kind_of, to_ops
from .ops import DTYPE, Activation, Op, Scale, numel

LOSS_KINDS = ("mse", "pyod")


@dataclass(frozen=True)
class Network:
    ops: tuple[Op, ...]
    in_shape: tuple[int, ...]
    skip_pos: int
    point_pos: int
    loss_kind: str
    description: str

    def __post_init__(self):
        if self.loss_kind not in LOSS_KINDS:
            raise CannotBound(f"loss kind {self.loss_kind!r} has no bound (known: {', '.join(LOSS_KINDS)})")
        if self.shape(self.skip_pos) != self.shape(len(self.ops)):
            raise CannotBound(
                f"the model maps {self.shape(self.skip_pos)} to {self.shape(len(self.ops))}, not to its input shape"
            )

    @property
    def dim(self) -> int:
        return numel(self.in_shape)

    def shape(self, pos: int) -> tuple[int, ...]:
        return self.in_shape if pos == 0 else self.ops[pos - 1].out_shape

    @property
    def smooth(self) -> bool:
        return any(isinstance(op, Activation) and op.name in ("Sigmoid", "Tanh") for op in self.ops)

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(point [B, n], residual [B, n])``, flattened per sample, for flat inputs ``x [B, dim]``."""
        h = x.to(DTYPE).reshape(x.shape[0], *self.in_shape)
        point = skip = h
        for k, op in enumerate(self.ops):
            h = op.forward(h)
            if k + 1 == self.point_pos:
                point = h
            if k + 1 == self.skip_pos:
                skip = h
        return point.flatten(1), (skip - h).flatten(1)

    def loss(self, residual: torch.Tensor) -> torch.Tensor:
        sq = residual.pow(2)
        return sq.sum(dim=1).sqrt() if self.loss_kind == "pyod" else sq.mean(dim=1)

    def evaluate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss [B], point [B, n])`` in float64 (differentiable)."""
        point, residual = self.run(x)
        return self.loss(residual), point


def _standardize_ops(shape, standardizer, inverse: bool) -> list[Op]:
    if standardizer is None:
        return []
    mean, divisor = (torch.as_tensor(t, dtype=DTYPE).reshape(shape) for t in standardizer)
    if inverse:
        return [Scale(shape, divisor, mean, "destandardize")]
    return [Scale(shape, 1.0 / divisor, -mean / divisor, "standardize")]


def _clamp_ops(shape, low, high) -> list[Op]:
    """``clamp(x, low, high) = high − relu(high − low − relu(x − low))`` as a chain."""
    low, high = (torch.as_tensor(v, dtype=DTYPE).expand(shape) for v in (low, high))
    return [
        Scale(shape, 1.0, -low, "clamp"),
        Activation("ReLU", shape),
        Scale(shape, -1.0, high - low, "clamp"),
        Activation("ReLU", shape),
        Scale(shape, -1.0, high, "clamp"),
    ]


def _describe(parts: Sequence[tuple[str, nn.Module]]) -> str:
    return " → ".join(f"{name} ({kind_of(m)})" for name, m in parts)


def input_network(
    parts: Sequence[nn.Module], input_shape: Sequence[int], *, standardizer=None, loss_kind: str = "mse"
) -> Network:
    """The residual network over data-space inputs: ``x ↦ x_m − f(x_m)``, ``x_m = (x − mean)/divisor``.

    ``parts``: ``(encoder, decoder)`` or ``(model,)``, applied in order; each a (scripted)
    Sequential or a supported layer. ``standardizer``: ``(mean, divisor)`` or ``None``."""
    shape = tuple(int(s) for s in input_shape)
    ops = _standardize_ops(shape, standardizer, inverse=False)
    skip = len(ops)
    names = ("encoder", "decoder") if len(parts) == 2 else ("model",)
    for name, part in zip(names, parts):
        ops += to_ops(part, ops[-1].out_shape if ops else shape, name)
    return Network(tuple(ops), shape, skip, 0, loss_kind, "x ↦ x − f(x), f = " + _describe(list(zip(names, parts))))


def latent_network(
    encoder: nn.Module,
    decoder: nn.Module,
    latent_shape: Sequence[int],
    *,
    standardizer=None,
    domain: tuple | None = None,
    loss_kind: str = "mse",
) -> Network:
    """The residual network over latent codes: ``z ↦ a_m − f(a_m)`` with ``a = clamp(D(z))`` in data space.

    ``domain``: ``(low, high)`` (scalars or per-feature) when the input domain is bounded: the latent
    searches project decodes onto it, so the bounded point is the clamped one."""
    zshape = tuple(int(s) for s in latent_shape)
    ops = to_ops(decoder, zshape, "decoder")
    xshape = ops[-1].out_shape if ops else zshape
    if standardizer is not None:
        ops += _standardize_ops(xshape, standardizer, inverse=True)
    if domain is not None:
        ops += _clamp_ops(xshape, *domain)
    point = len(ops)
    ops += _standardize_ops(xshape, standardizer, inverse=False)
    skip = len(ops)
    ops += to_ops(encoder, xshape, "encoder")
    ops += to_ops(decoder, ops[-1].out_shape, "decoder")
    return Network(
        tuple(ops),
        zshape,
        skip,
        point,
        loss_kind,
        "z ↦ a − f(a), a = D(z)"
        + (" clamped to the domain" if domain is not None else "")
        + ", f = "
        + _describe([("encoder", encoder), ("decoder", decoder)]),
    )


def check_against(
    network: Network, inputs: torch.Tensor, loss: torch.Tensor, point: torch.Tensor | None = None, rtol: float = 1e-6
) -> float:
    """Compare the chain with the model's own float64 loss (and point) on ``inputs``; raise
    :class:`CannotBound` when they differ, e.g. because ``forward`` is not ``decoder(encoder(x))``.
    Returns the largest relative difference of the losses."""
    with torch.no_grad():
        own_loss, own_point = network.evaluate(inputs.reshape(inputs.shape[0], -1))
    ref = loss.to(DTYPE).flatten()
    scale = ref.abs() + ref.abs().median() + torch.finfo(DTYPE).tiny
    worst = float(((own_loss - ref).abs() / scale).max())
    if not worst <= rtol:
        raise CannotBound(
            f"the encoder → decoder chain does not reproduce the model's loss (relative difference "
            f"{worst:.2g} > {rtol:g}): its forward does more than decoder(encoder(x))"
        )
    if point is not None:
        ref_point = point.to(DTYPE).reshape(point.shape[0], -1)
        gap = float((own_point - ref_point).abs().max() / (ref_point.abs().max() + 1e-300))
        if not gap <= rtol:
            raise CannotBound(f"the chain's decoded points differ from the model's decode (relative {gap:.2g})")
    return worst
