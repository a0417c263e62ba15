"""From a torch module to the chain of operations the bound engine understands.

Accepted: an ``nn.Sequential`` (also nested, also TorchScript-scripted: a scripted Sequential runs
its children in order and each child keeps its class name in ``original_name``), PyOD's
``LinearBlock``, or a single supported layer. Supported layers: Linear, Conv2d, ConvTranspose2d (zero padding), ReLU,
LeakyReLU (slope in [0, 1]), Sigmoid, Tanh, Identity, Dropout (identity in eval mode), Flatten,
Unflatten, BatchNorm1d/2d (eval mode, running statistics), AvgPool2d, MaxPool2d (no padding, written
exactly as ReLUs: ``max(u, v) = relu(u − v) + relu(v) − relu(−v)``), and the 1-D forms Conv1d,
ConvTranspose1d, AvgPool1d and MaxPool1d (as their 2-D forms on a ``(channels, 1, length)`` view).
Anything else raises :class:`CannotBound` with the reason.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from .ops import DTYPE, Activation, Affine, Conv, ConvGeometry, Dense, Op, Reshape, Scale


class CannotBound(Exception):
    """The model (or one of its layers) is outside what the bound engine supports; ``str()`` says what."""


def kind_of(module: Any) -> str:
    """The class name of a module, also for TorchScript modules (``original_name``)."""
    return getattr(module, "original_name", None) or type(module).__name__


IDENTITIES = {"Identity", "Dropout", "Dropout1d", "Dropout2d", "AlphaDropout"}
ACTIVATIONS = {"ReLU", "LeakyReLU", "Sigmoid", "Tanh"}
# PyOD's LinearBlock.forward: linear → batch norm → activation → dropout (not its registration order;
# every chain is also checked numerically against the model's own loss before use: network.check_against)
PYOD_BLOCK_ORDER = ("linear", "bn", "activation", "dropout")
ONE_D = {"Conv1d": "Conv2d", "ConvTranspose1d": "ConvTranspose2d", "AvgPool1d": "AvgPool2d", "MaxPool1d": "MaxPool2d"}
MODE_DEPENDENT = IDENTITIES - {"Identity"} | {"BatchNorm1d", "BatchNorm2d"}  # behave differently in training mode


def to_ops(module: Any, in_shape: tuple[int, ...], where: str = "model") -> list[Op]:
    """The operations of ``module`` applied to per-sample inputs of ``in_shape``.

    Raises :class:`CannotBound` for anything unsupported, with where it sits (``where.0.3``)."""
    if not isinstance(module, nn.Module):
        raise CannotBound(
            f"{where} is a {type(module).__name__}, not a module (a method or function cannot be bounded)"
        )
    kind = kind_of(module)
    if kind in MODE_DEPENDENT and getattr(module, "training", False):
        raise CannotBound(f"{where} ({kind}) is in training mode; bounds hold for eval mode only")
    if kind == "Sequential":
        return _chain(list(module.named_children()), in_shape, where)
    if kind == "LinearBlock":
        children = dict(module.named_children())
        return _chain([(n, children[n]) for n in PYOD_BLOCK_ORDER if n in children], in_shape, where)
    return _layer(module, kind, tuple(in_shape), where)


def _chain(children: list[tuple[str, Any]], in_shape: tuple[int, ...], where: str) -> list[Op]:
    ops: list[Op] = []
    shape = tuple(in_shape)
    for name, child in children:
        for op in to_ops(child, shape, f"{where}.{name}"):
            ops.append(op)
            shape = op.out_shape
    return ops


def _tensor(module: Any, name: str) -> torch.Tensor | None:
    t = getattr(module, name, None)
    return None if t is None else t.detach().to("cpu", DTYPE)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _layer(m: Any, kind: str, shape: tuple[int, ...], where: str) -> list[Op]:
    label = f"{where} ({kind})"
    if kind in IDENTITIES:
        return []
    if kind in ACTIVATIONS:
        slope = float(getattr(m, "negative_slope", 0.0)) if kind == "LeakyReLU" else 0.0
        if not 0.0 <= slope <= 1.0:
            raise CannotBound(f"{label}: negative_slope {slope:g} outside [0, 1] has no relaxation here")
        return [Activation(kind, shape, slope)]
    if kind == "Linear":
        if len(shape) != 1 or shape[0] != m.weight.shape[1]:
            raise CannotBound(f"{label} expects {m.weight.shape[1]} features per sample, gets shape {shape}")
        return [Dense(_tensor(m, "weight"), _tensor(m, "bias"), name=kind)]
    if kind in ("Conv2d", "ConvTranspose2d"):
        return [_conv(m, kind, shape, label)]
    if kind in ("Flatten", "Unflatten"):
        return [_reshape(m, kind, shape, label)]
    if kind in ("BatchNorm1d", "BatchNorm2d"):
        return [_batchnorm(m, kind, shape, label)]
    if kind == "AvgPool2d":
        return [_avgpool(m, shape, label)]
    if kind == "MaxPool2d":
        return _maxpool(m, shape, label)
    if kind in ONE_D:
        return _one_d(m, kind, shape, label)
    raise CannotBound(f"{label}: no bound propagation for this layer type")


def _conv(m: Any, kind: str, shape: tuple[int, ...], label: str) -> Affine:
    if len(shape) != 3:
        raise CannotBound(f"{label} expects (channels, height, width) inputs, gets shape {shape}")
    if getattr(m, "padding_mode", "zeros") != "zeros" or isinstance(m.padding, str):
        raise CannotBound(f"{label}: only numeric zero padding is supported (got {m.padding_mode!r}, {m.padding!r})")
    geometry = ConvGeometry(
        _pair(m.stride), _pair(m.padding), _pair(m.dilation), int(m.groups), _pair(getattr(m, "output_padding", 0))
    )
    try:
        return Conv(_tensor(m, "weight"), _tensor(m, "bias"), geometry, shape, kind == "ConvTranspose2d", kind)
    except (RuntimeError, ValueError) as exc:
        raise CannotBound(f"{label} does not fit input shape {shape}: {exc}") from None


def _reshape(m: Any, kind: str, shape: tuple[int, ...], label: str) -> Affine:
    try:
        with torch.no_grad():
            out = m(torch.zeros(2, *shape))
    except Exception as exc:  # noqa: BLE001 - any failure means the shape does not fit
        raise CannotBound(f"{label} does not fit input shape {shape}: {exc}") from None
    if out.shape[0] != 2 or out[0].numel() != torch.Size(shape).numel():
        raise CannotBound(f"{label} mixes the batch dimension into the sample (start dim 0)")
    return Reshape(shape, tuple(out.shape[1:]), kind)


def _batchnorm(m: Any, kind: str, shape: tuple[int, ...], label: str) -> Affine:
    mean, var = _tensor(m, "running_mean"), _tensor(m, "running_var")
    if mean is None or var is None:
        raise CannotBound(f"{label} has no running statistics (track_running_stats=False uses batch statistics)")
    ranks = (1, 2) if kind == "BatchNorm1d" else (3,)
    if len(shape) not in ranks or shape[0] != mean.numel():
        raise CannotBound(f"{label} with {mean.numel()} channels does not fit input shape {shape}")
    mult = 1.0 / torch.sqrt(var + float(m.eps))
    weight, bias = _tensor(m, "weight"), _tensor(m, "bias")
    if weight is not None:
        mult = mult * weight
    add = -mean * mult + (bias if bias is not None else 0.0)
    view = (-1,) + (1,) * (len(shape) - 1)
    return Scale(shape, mult.reshape(view), add.reshape(view), kind)


def _avgpool(m: Any, shape: tuple[int, ...], label: str) -> Affine:
    """Average pooling as a depthwise convolution with weights ``1/k²`` (zero padding counted)."""
    if len(shape) != 3:
        raise CannotBound(f"{label} expects (channels, height, width) inputs, gets shape {shape}")
    padding = _pair(m.padding)
    if m.ceil_mode or m.divisor_override is not None or (padding != (0, 0) and not m.count_include_pad):
        raise CannotBound(f"{label}: ceil_mode, divisor_override and count_include_pad=False are not supported")
    kh, kw = _pair(m.kernel_size)
    stride = _pair(m.stride if m.stride is not None else m.kernel_size)
    channels = shape[0]
    weight = torch.full((channels, 1, kh, kw), 1.0 / (kh * kw), dtype=DTYPE)
    return Conv(weight, None, ConvGeometry(stride, padding, (1, 1), channels), shape, False, "AvgPool2d")


def _maxpool(m: Any, shape: tuple[int, ...], label: str) -> list[Op]:
    """Max pooling, exactly, as a knockout tournament over each window: every round pairs the values
    left, ``max(u, v) = relu(u − v) + relu(v) − relu(−v)``, so a round is an affine map, a ReLU and the
    next affine map (grouped convolutions, one group per channel). Where the pooled values are
    non-negative (after a ReLU, the usual place), ``relu(±v)`` is exact and only ``relu(u − v)`` relaxes."""
    if len(shape) != 3:
        raise CannotBound(f"{label} expects (channels, height, width) inputs, gets shape {shape}")
    if _pair(m.padding) != (0, 0) or m.ceil_mode or m.return_indices:
        raise CannotBound(f"{label}: padding, ceil_mode and return_indices are not supported (pads are −inf)")
    kh, kw = _pair(m.kernel_size)
    stride, dilation = _pair(m.stride if m.stride is not None else m.kernel_size), _pair(m.dilation)
    slots = torch.eye(kh * kw, dtype=DTYPE)  # the values still in play, as combinations of the current inputs
    ops: list[Op] = []
    while slots.shape[0] > 1:
        pairs, odd = divmod(slots.shape[0], 2)
        split, merge = [], []
        for i in range(pairs):  # (u − v, v, −v) → relu → r₀ + r₁ − r₂ = max(u, v)
            u, v = slots[2 * i], slots[2 * i + 1]
            split += [u - v, v, -v]
            merge.append((1.0, 1.0, -1.0))
        if odd:  # the last value waits a round: (w, −w) → relu → r₀ − r₁ = w
            split += [slots[-1], -slots[-1]]
            merge.append((1.0, -1.0))
        ops.append(_window_map(torch.stack(split), ops, shape, (kh, kw), stride, dilation))
        ops.append(Activation("ReLU", ops[-1].out_shape, 0.0))
        slots = torch.block_diag(*[torch.tensor([c], dtype=DTYPE) for c in merge])
    ops.append(_window_map(slots, ops, shape, (kh, kw), stride, dilation))
    return ops


def _window_map(matrix: torch.Tensor, ops: list[Op], shape, kernel, stride, dilation) -> Conv:
    """``matrix`` [out, in] applied per channel: over the pooling window for the first map (a grouped
    convolution with the pooling's geometry), else over the previous ReLU's outputs (1×1)."""
    channels = shape[0]
    first = not ops
    size = kernel if first else (1, 1)
    weight = matrix.reshape(matrix.shape[0], 1 if first else matrix.shape[1], *size).repeat(channels, 1, 1, 1)
    geometry = ConvGeometry(stride if first else (1, 1), (0, 0), dilation if first else (1, 1), channels)
    return Conv(weight, None, geometry, shape if first else ops[-1].out_shape, False, "MaxPool2d")


def _one_d(m: Any, kind: str, shape: tuple[int, ...], label: str) -> list[Op]:
    """A 1-D convolution or pooling as its 2-D form on a ``(channels, 1, length)`` view of the input."""
    if len(shape) != 2:
        raise CannotBound(f"{label} expects (channels, length) inputs, gets shape {shape}")

    def widen(name: str, value: Any) -> Any:
        if name == "weight":
            return value.unsqueeze(2)  # [out, in/groups, k] → [out, in/groups, 1, k]
        if name in ("kernel_size", "stride", "dilation", "padding", "output_padding") and value is not None:
            if isinstance(value, str):
                return value  # padding="same": refused by the 2-D form with its reason
            (v,) = (value,) if isinstance(value, int) else tuple(value)
            return (0 if name in ("padding", "output_padding") else 1, int(v))
        return value

    names = ("weight", "bias", "kernel_size", "stride", "dilation", "padding", "output_padding", "groups")
    names += ("padding_mode", "ceil_mode", "count_include_pad", "return_indices")
    view = SimpleNamespace(divisor_override=None, training=False)
    for name in names:
        if hasattr(m, name):
            setattr(view, name, widen(name, getattr(m, name)))
    square = (shape[0], 1, shape[1])
    ops = _layer(view, ONE_D[kind], square, label)
    channels, _, length = ops[-1].out_shape
    return [Reshape(shape, square, kind), *ops, Reshape(ops[-1].out_shape, (channels, length), kind)]
