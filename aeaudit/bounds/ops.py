"""The layers the bound engine understands, as float64 operations on per-sample tensors.

Every layer of a supported network becomes one of two kinds of operation:

* :class:`Affine` — ``y = L(x) + b`` with ``L`` linear (Linear, Conv2d, ConvTranspose2d, AvgPool2d,
  BatchNorm in eval mode, the model's standardisation, reshapes). Besides evaluating, an affine
  operation applies ``L`` with only its positive or only its negative weights (forward-mode
  linear bounds), with ``|W|`` (interval propagation) and its adjoint ``Lᵀ`` (backward CROWN).
* :class:`Activation` — an elementwise monotone function (ReLU, LeakyReLU, Sigmoid, Tanh) with
  a linear relaxation on an interval (:mod:`aeaudit.bounds.relax`).

Tensors carry a leading batch dimension; ``in_shape``/``out_shape`` are per sample.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import relax

DTYPE = torch.float64


class Affine(ABC):
    """``y = L(x) + bias``; subclasses implement ``_apply(x, weight)`` and ``adjoint``."""

    kind = "affine"
    nonnegative = False  # True when L has no negative weights (reshape): skips the negative half

    def __init__(self, name: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...], bias: torch.Tensor | None):
        self.name, self.in_shape, self.out_shape = name, tuple(in_shape), tuple(out_shape)
        self.bias = None if bias is None else bias.to(DTYPE)

    @abstractmethod
    def _apply(self, x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """The weight-dependent part, with a chosen weight tensor (the real one, |W|, W⁺ or W⁻)."""

    @abstractmethod
    def _weights(self) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """``(W, |W|, W⁺, W⁻)``."""

    @abstractmethod
    def adjoint(self, lam: torch.Tensor) -> torch.Tensor:
        """``Lᵀ`` on a batch of coefficient tensors ``[N, *out_shape] → [N, *in_shape]``."""

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x, self._weights()[0])

    def abs_linear(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x, self._weights()[1])

    def pos_linear(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x, self._weights()[2])

    def neg_linear(self, x: torch.Tensor) -> torch.Tensor | None:
        return None if self.nonnegative else self._apply(x, self._weights()[3])

    def add_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.bias is None else y + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_bias(self.linear(x))

    def bias_dot(self, lam: torch.Tensor) -> torch.Tensor | float:
        """``⟨Λ, b⟩`` per coefficient row: ``[B, K, *out_shape] → [B, K]`` (0 without a bias)."""
        if self.bias is None:
            return 0.0
        b = self.bias.expand(self.out_shape)
        return (lam * b).flatten(2).sum(dim=2)

    def abs_bias(self) -> torch.Tensor | float:
        return 0.0 if self.bias is None else self.bias.abs().expand(self.out_shape)

    def __repr__(self) -> str:
        return f"{self.name}{self.in_shape}->{self.out_shape}"


def _split_signs(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    w = w.to(DTYPE)
    return w, w.abs(), w.clamp(min=0), w.clamp(max=0)


class Dense(Affine):
    """``nn.Linear`` on a flat per-sample vector."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, name: str = "Linear"):
        super().__init__(name, (weight.shape[1],), (weight.shape[0],), bias)
        self.w = _split_signs(weight)

    def _weights(self):
        return self.w

    def _apply(self, x, weight):
        return x @ weight.T

    def adjoint(self, lam):
        return lam @ self.w[0]


@dataclass(frozen=True)
class ConvGeometry:
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    output_padding: tuple[int, int] = (0, 0)


class Conv(Affine):
    """``nn.Conv2d`` (``transposed=False``) or ``nn.ConvTranspose2d`` (``transposed=True``), zero padding.

    The adjoint of a convolution is the transposed convolution with the same weight (and the
    reverse); ``adjoint_padding`` makes the transposed one land exactly on ``in_shape``.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        geometry: ConvGeometry,
        in_shape: tuple[int, ...],
        transposed: bool,
        name: str,
    ):
        self.w = _split_signs(weight)
        self.geometry, self.transposed = geometry, transposed
        probe = torch.zeros(1, *in_shape, dtype=DTYPE)
        out_shape = tuple(self._apply(probe, self.w[0]).shape[1:])
        bias_view = None if bias is None else bias.reshape(-1, 1, 1)
        super().__init__(name, in_shape, out_shape, bias_view)
        self.adjoint_padding = (0, 0)
        if not transposed:  # conv_transpose2d of an out_shape tensor must give back in_shape exactly
            natural = self._adjoint_raw(torch.zeros(1, *out_shape, dtype=DTYPE), (0, 0)).shape[-2:]
            self.adjoint_padding = (in_shape[-2] - natural[0], in_shape[-1] - natural[1])
        back = self.adjoint(torch.zeros(1, *out_shape, dtype=DTYPE))
        if tuple(back.shape[1:]) != tuple(in_shape):
            raise ValueError(f"{name}: adjoint shape {tuple(back.shape[1:])} does not match input {in_shape}")

    def _apply(self, x, weight):
        g = self.geometry
        if self.transposed:
            return F.conv_transpose2d(x, weight, None, g.stride, g.padding, g.output_padding, g.groups, g.dilation)
        return F.conv2d(x, weight, None, g.stride, g.padding, g.dilation, g.groups)

    def _adjoint_raw(self, lam, output_padding):
        g = self.geometry
        if self.transposed:
            return F.conv2d(lam, self.w[0], None, g.stride, g.padding, g.dilation, g.groups)
        return F.conv_transpose2d(lam, self.w[0], None, g.stride, g.padding, output_padding, g.groups, g.dilation)

    def _weights(self):
        return self.w

    def adjoint(self, lam):
        return self._adjoint_raw(lam, self.adjoint_padding)


class Scale(Affine):
    """Elementwise ``y = x·m + a`` (``m``, ``a`` broadcast to the shape): BatchNorm in eval mode,
    the model's standardisation, and the pieces of a clamp."""

    def __init__(self, shape: tuple[int, ...], mult: torch.Tensor | float, add: torch.Tensor | float | None, name: str):
        m = torch.as_tensor(mult, dtype=DTYPE).expand(shape).clone()
        super().__init__(
            name, shape, shape, None if add is None else torch.as_tensor(add, dtype=DTYPE).expand(shape).clone()
        )
        self.m = _split_signs(m)
        self.nonnegative = bool((m >= 0).all())

    def _weights(self):
        return self.m

    def _apply(self, x, weight):
        return x * weight

    def adjoint(self, lam):
        return lam * self.m[0]


class Reshape(Affine):
    """Flatten / Unflatten: the same numbers in another per-sample shape."""

    nonnegative = True

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], name: str):
        super().__init__(name, in_shape, out_shape, None)

    def _weights(self):
        return (None, None, None, None)

    def _apply(self, x, weight):
        return x.reshape(x.shape[0], *self.out_shape)

    def adjoint(self, lam):
        return lam.reshape(lam.shape[0], *self.in_shape)


class Activation:
    """An elementwise monotone non-decreasing function with a linear relaxation on ``[l, u]``."""

    kind = "activation"

    def __init__(self, name: str, shape: tuple[int, ...], negative_slope: float = 0.0):
        if name not in relax.RELAXATIONS:
            raise ValueError(f"no relaxation for {name}")
        self.name, self.in_shape, self.out_shape = name, tuple(shape), tuple(shape)
        self.negative_slope = float(negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.name == "ReLU":
            return torch.relu(x)
        if self.name == "LeakyReLU":
            return F.leaky_relu(x, self.negative_slope)
        return torch.sigmoid(x) if self.name == "Sigmoid" else torch.tanh(x)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact image of ``[lo, hi]`` (monotone), widened by the rounding of a transcendental function."""
        flo, fhi = self.forward(lo), self.forward(hi)
        if self.name in ("Sigmoid", "Tanh"):
            slack = relax.FUNCTION_ULPS * torch.finfo(DTYPE).eps
            flo, fhi = flo - slack * flo.abs() - relax.TINY, fhi + slack * fhi.abs() + relax.TINY
        return flo, fhi

    def relaxation(self, lo: torch.Tensor, hi: torch.Tensor):
        """``(a_l, b_l, a_u, b_u)``: ``a_l·x + b_l ≤ f(x) ≤ a_u·x + b_u`` on ``[lo, hi]``, slopes ≥ 0."""
        return relax.RELAXATIONS[self.name](lo, hi, self.negative_slope)

    def __repr__(self) -> str:
        return f"{self.name}{self.in_shape}"


Op = Affine | Activation


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
