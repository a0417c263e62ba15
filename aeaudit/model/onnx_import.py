"""ONNX graphs, the format detectors are deployed in, as torch modules.

:class:`OnnxGraph` runs the operator subset autoencoders use on torch functional ops, so gradients
flow and every probe runs. A graph with other operators (or whose conversion disagrees with
onnxruntime) runs on onnxruntime instead, as :class:`OnnxRuntimeModule`, which has no gradients:
it is marked ``differentiable = False`` and the card says so, so only gradient-free probes run.

ONNX holds no code, but a tensor may keep its bytes in an external file named by a relative path:
such paths must stay inside the model's folder.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, one_line

log = logging.getLogger(__name__)
INSTALL_HINT = "install ONNX support: pip install 'aeaudit[onnx]'"
STANDARD_DOMAINS = ("", "ai.onnx")


class Unconvertible(Exception):
    """A node (or attribute) outside the converted subset: the graph runs on onnxruntime instead."""


def _onnx():
    try:
        import onnx
    except ImportError:
        raise InputError(f"this is an ONNX model; {INSTALL_HINT}") from None
    return onnx


# --------------------------------------------------------------------------- operators (torch functional)
def _pads(attrs: dict, spatial: int) -> list[int]:
    pads = attrs.get("pads") or [0] * (2 * spatial)
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise Unconvertible("auto_pad SAME_*")
    return list(pads)


def _symmetric(pads: list[int], spatial: int) -> tuple[list[int], list[int] | None]:
    """ONNX pads ``[b1, b2, ..., e1, e2, ...]`` → torch's symmetric padding, or an explicit F.pad list."""
    begin, end = pads[:spatial], pads[spatial:]
    if begin == end:
        return begin, None
    explicit = []
    for b, e in zip(reversed(begin), reversed(end)):
        explicit += [b, e]
    return [0] * spatial, explicit


def _conv(x, w, b=None, **a):
    spatial = w.dim() - 2
    padding, explicit = _symmetric(_pads(a, spatial), spatial)
    if explicit:
        x = F.pad(x, explicit)
    conv = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    return conv(
        x, w, b, stride=a.get("strides", 1), padding=padding, dilation=a.get("dilations", 1), groups=a.get("group", 1)
    )


def _conv_transpose(x, w, b=None, **a):
    spatial = w.dim() - 2
    if "output_shape" in a:
        raise Unconvertible("ConvTranspose output_shape")
    padding, explicit = _symmetric(_pads(a, spatial), spatial)
    if explicit:
        raise Unconvertible("asymmetric ConvTranspose pads")
    conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[spatial - 1]
    return conv(
        x,
        w,
        b,
        stride=a.get("strides", 1),
        padding=padding,
        output_padding=a.get("output_padding", 0),
        groups=a.get("group", 1),
        dilation=a.get("dilations", 1),
    )


def _gemm(a_, b_, c=None, **a):
    if a.get("transA", 0):
        a_ = a_.t()
    if a.get("transB", 0):
        b_ = b_.t()
    out = a.get("alpha", 1.0) * (a_ @ b_)
    return out if c is None else out + a.get("beta", 1.0) * c


def _pool(kind):
    def run(x, **a):
        spatial = x.dim() - 2
        padding, explicit = _symmetric(_pads(a, spatial), spatial)
        if explicit or a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1])):
            raise Unconvertible(f"{kind} with asymmetric pads, ceil_mode or dilations")
        kernel, stride = a["kernel_shape"], a.get("strides", 1)
        if kind == "max":
            return (F.max_pool1d, F.max_pool2d, F.max_pool3d)[spatial - 1](x, kernel, stride, padding)
        include = bool(a.get("count_include_pad", 0))
        return (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[spatial - 1](
            x, kernel, stride, padding, count_include_pad=include
        )

    return run


def _ints(t) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


def _reshape(x, shape, **a):
    dims = _ints(shape)
    if not a.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _axes(a, axes):
    return _ints(axes) if axes is not None else list(a.get("axes", []))


def _unsqueeze(x, axes=None, **a):
    for axis in sorted(ax % (x.dim() + len(_axes(a, axes))) for ax in _axes(a, axes)):
        x = x.unsqueeze(axis)
    return x


def _squeeze(x, axes=None, **a):
    dims = _axes(a, axes)
    if not dims:
        return x.squeeze()
    for axis in sorted((ax % x.dim() for ax in dims), reverse=True):
        x = x.squeeze(axis)
    return x


def _batch_norm(x, scale, bias, mean, var, **a):
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=a.get("epsilon", 1e-5))


def _slice(x, starts, ends, axes=None, steps=None, **a):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st < 1:
            raise Unconvertible("Slice with negative steps")
        size = x.shape[ax]
        index[ax] = slice(max(min(s, size), -size), max(min(e, size), -size - 1), st)
    return x[tuple(index)]


def _clip(x, lo=None, hi=None, **a):
    lo = lo if lo is not None else a.get("min")
    hi = hi if hi is not None else a.get("max")
    return torch.clamp(x, min=lo, max=hi)


def _cast(x, **a):
    return x.to(ONNX_DTYPES[a["to"]]) if a["to"] in ONNX_DTYPES else x


ONNX_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64}

OPS: dict[str, Any] = {
    "Gemm": _gemm,
    "MatMul": lambda a, b: a @ b,
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": lambda a, b: (
        a / b if a.is_floating_point() or b.is_floating_point() else torch.div(a, b, rounding_mode="trunc")
    ),
    "Pow": lambda a, b: a**b,
    "Mod": lambda a, b, **at: torch.fmod(a, b) if at.get("fmod", 0) else torch.remainder(a, b),
    "Neg": lambda x: -x,
    "Sqrt": torch.sqrt,
    "Exp": torch.exp,
    "Log": torch.log,
    "Abs": torch.abs,
    "Erf": torch.erf,
    "Relu": F.relu,
    "LeakyRelu": lambda x, **a: F.leaky_relu(x, a.get("alpha", 0.01)),
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Elu": lambda x, **a: F.elu(x, a.get("alpha", 1.0)),
    "Selu": F.selu,
    "Softplus": F.softplus,
    "HardSigmoid": lambda x, **a: torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0, 1),
    "Clip": _clip,
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "BatchNormalization": _batch_norm,
    "Dropout": lambda x, *rest, **a: x,
    "Identity": lambda x: x,
    "Reshape": _reshape,
    "Flatten": lambda x, **a: x.reshape(math.prod(x.shape[: a.get("axis", 1)]), -1),
    "Transpose": lambda x, **a: x.permute(*(a.get("perm") or list(reversed(range(x.dim()))))),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Shape": lambda x, **a: torch.tensor(
        x.shape[a.get("start", 0) : a.get("end", None)], dtype=torch.int64, device=x.device
    ),
    "Gather": lambda x, i, **a: torch.index_select(x, a.get("axis", 0), i.reshape(-1).long()).reshape(
        *x.shape[: a.get("axis", 0) % x.dim()], *i.shape, *x.shape[a.get("axis", 0) % x.dim() + 1 :]
    ),
    "Concat": lambda *xs, **a: torch.cat(xs, dim=a["axis"]),
    "Slice": _slice,
    "Cast": _cast,
}
NO_OUTPUT_EXTRAS = {"Dropout", "BatchNormalization", "MaxPool"}  # optional extra outputs aeaudit never reads


def _attributes(node, onnx) -> dict[str, Any]:
    out = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, onnx.TensorProto):
            value = torch.from_numpy(onnx.numpy_helper.to_array(value).copy())
        out[attr.name] = value
    return out


def _constant(attrs: dict) -> torch.Tensor:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs:
            value = attrs[key]
            return value if isinstance(value, torch.Tensor) else torch.tensor(value)
    raise Unconvertible(f"Constant with {', '.join(attrs)}")


class OnnxGraph(nn.Module):
    """An ONNX graph evaluated with torch ops: differentiable, moves with ``.to(device, dtype)``."""

    differentiable = True

    def __init__(self, model, onnx):
        super().__init__()
        graph = model.graph
        self.names: dict[str, str] = {}  # ONNX tensor name → attribute holding it
        for i, init in enumerate(graph.initializer):
            value = torch.from_numpy(onnx.numpy_helper.to_array(init).copy())
            attr = f"t{i}"
            if value.is_floating_point():
                self.register_parameter(attr, nn.Parameter(value, requires_grad=False))
            else:
                self.register_buffer(attr, value)
            self.names[init.name] = attr
        inputs = [i.name for i in graph.input if i.name not in self.names]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise InputError(
                f"the ONNX graph takes {len(inputs)} inputs and gives {len(graph.output)} outputs; "
                "an autoencoder takes one tensor and returns one"
            )
        self.input_name, self.output_name = inputs[0], graph.output[0].name
        self.steps: list[tuple[str, list[str], list[str], dict]] = []
        for node in graph.node:
            if node.domain not in STANDARD_DOMAINS or node.op_type not in OPS and node.op_type != "Constant":
                raise Unconvertible(f"operator {node.domain + '.' if node.domain else ''}{node.op_type}")
            self.steps.append((node.op_type, list(node.input), list(node.output), _attributes(node, onnx)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, Any] = {name: getattr(self, attr) for name, attr in self.names.items()}
        env[self.input_name] = x
        for op, inputs, outputs, attrs in self.steps:
            if op == "Constant":
                value = _constant(attrs)
                env[outputs[0]] = value.to(x.device, x.dtype) if value.is_floating_point() else value.to(x.device)
                continue
            args = [env[name] if name else None for name in inputs]
            while args and args[-1] is None:
                args.pop()
            env[outputs[0]] = OPS[op](*args, **attrs)
        return env[self.output_name]


class OnnxRuntimeModule(nn.Module):
    """An ONNX graph run by onnxruntime in float32: no gradients (``differentiable = False``)."""

    differentiable = False

    def __init__(self, model_bytes: bytes):
        super().__init__()
        self.model_bytes = model_bytes
        self._session = None

    @property
    def session(self):
        if self._session is None:
            import onnxruntime

            self._session = onnxruntime.InferenceSession(self.model_bytes, providers=["CPUExecutionProvider"])
        return self._session

    def __deepcopy__(self, memo):  # the session cannot be copied; the copy opens its own
        return OnnxRuntimeModule(self.model_bytes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        session = self.session
        feed = {session.get_inputs()[0].name: x.detach().cpu().numpy().astype(np.float32)}
        out = session.run([session.get_outputs()[0].name], feed)[0]
        return torch.from_numpy(out).to(x.device, x.dtype)


# --------------------------------------------------------------------------- loading
def _external_data(model, base: Path, src: str, onnx) -> bool:
    """Check every external-data path stays inside ``base``; ``True`` when the model has any."""
    found = False
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            tensors += ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
    for tensor in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        found = True
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(base.resolve()):
            raise InputError(
                f"{src}: the tensor {tensor.name!r} keeps its data in {location!r}, outside the model's "
                "folder; aeaudit reads external data only from files beside the model"
            )
        if not target.is_file():
            raise InputError(f"{src}: the tensor {tensor.name!r} keeps its data in {location}, which is missing")
    return found


def input_shape_of(model) -> tuple[int, ...] | None:
    """The per-sample input shape the graph declares, when every dimension after the batch is fixed."""
    graph = model.graph
    initialized = {i.name for i in graph.initializer}
    value = next(i for i in graph.input if i.name not in initialized)
    dims = value.type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims[1:]]
    return tuple(shape) if shape and all(shape) else None


def _agrees_with_onnxruntime(module: OnnxGraph, model_bytes: bytes, shape: tuple[int, ...]) -> str:
    """Empty when the torch conversion matches onnxruntime on random inputs, else why not."""
    try:
        reference = OnnxRuntimeModule(model_bytes)
    except ImportError:
        return ""
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            ours, theirs = module(x), reference(x)
    except Exception as exc:
        return one_line(exc)
    if ours.shape != theirs.shape or not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5):
        return "its output differs from onnxruntime's"
    return ""


def load_onnx(data: bytes, path: Path) -> tuple[nn.Module, tuple[int, ...] | None, str]:
    """``(module, declared per-sample input shape, note)``: a torch conversion when the graph uses only the
    supported operators (checked against onnxruntime when it is installed), else an onnxruntime module."""
    onnx = _onnx()
    src = str(path)
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:
        raise InputError(f"{src}: not a readable ONNX model ({one_line(exc)})") from None
    if _external_data(model, path.parent, src, onnx):
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(path.parent))
        data = model.SerializeToString()
    shape = input_shape_of(model)
    try:
        module = OnnxGraph(model, onnx)
        why = _agrees_with_onnxruntime(module, data, shape) if shape else ""
    except Unconvertible as exc:
        why = f"{exc} is not converted to torch"
    except InputError:
        raise
    except Exception as exc:
        why = f"conversion failed ({one_line(exc)})"
    if not why:
        return module, shape, "ONNX graph converted to torch operators (gradients available)"
    try:
        runtime = OnnxRuntimeModule(data)
        runtime.session  # noqa: B018 - open it now, so an unusable graph fails here with one line
    except ImportError:
        raise InputError(f"{src}: {why}, and onnxruntime, which would run it, is missing; {INSTALL_HINT}") from None
    except Exception as exc:
        raise InputError(f"{src}: {why}, and onnxruntime cannot run it either ({one_line(exc)})") from None
    log.warning("%s: %s; running it on onnxruntime without gradients", src, why)
    return (
        runtime,
        shape,
        (
            f"ONNX graph run on onnxruntime ({why}): no gradients, so only gradient-free "
            "probes apply, and findings are verified in float32"
        ),
    )
