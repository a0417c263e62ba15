"""What a model is made of: the model card of the report.

The layer inventory is read from what is really there — the module tree and, where it can
be traced, the functional calls of ``forward`` — never from class names alone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

# Operations that keep a network piecewise linear (affine on polyhedral cells).
PIECEWISE_LINEAR_OPS = {
    "Linear",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "ReLU",
    "LeakyReLU",
    "PReLU",
    "ReLU6",
    "Hardtanh",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "Flatten",
    "Unflatten",
    "Identity",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Upsample",
    "ZeroPad2d",
    "ConstantPad2d",
    "Sequential",
    "ModuleList",
    # functional / aten spellings
    "relu",
    "relu_",
    "leaky_relu",
    "linear",
    "conv1d",
    "conv2d",
    "conv_transpose1d",
    "conv_transpose2d",
    "max_pool2d",
    "max_pool1d",
    "avg_pool2d",
    "batch_norm",
    "flatten",
    "view",
    "reshape",
    "add",
    "sub",
    "mul",
    "cat",
    "hardtanh",
    "dropout",
    "addmm",
    "mm",
    "matmul",
    "permute",
    "transpose",
    "unflatten",
    "t",
    "convolution",
    "squeeze",
    "unsqueeze",
    "contiguous",
    "size",
    "getitem",
    "neg",
    "clone",
    "max_pool2d_with_indices",
    "_native_batch_norm_legit_no_training",
    "expand",
    "alias",
}
SMOOTH_ACTIVATIONS = {
    "Sigmoid",
    "Tanh",
    "GELU",
    "SiLU",
    "ELU",
    "SELU",
    "CELU",
    "Softplus",
    "Mish",
    "LogSigmoid",
    "Softsign",
    "sigmoid",
    "tanh",
    "gelu",
    "silu",
    "elu",
    "selu",
    "softplus",
    "mish",
    "exp",
    "log",
}
ACTIVATION_NAMES = {
    "ReLU",
    "LeakyReLU",
    "PReLU",
    "ReLU6",
    "Hardtanh",
    "relu",
    "relu_",
    "leaky_relu",
    "hardtanh",
    "prelu",
} | SMOOTH_ACTIVATIONS
CONTAINERS = {"Sequential", "ModuleList", "ModuleDict"}


@dataclass
class ModelCard:
    """Facts about the loaded model, shown in the report's model card."""

    format: str
    source: str = ""
    sha256: str = ""
    n_parameters: int = 0
    layers: dict[str, int] = field(default_factory=dict)
    activations: list[str] = field(default_factory=list)
    unknown_ops: list[str] = field(default_factory=list)
    piecewise_linear: bool = False
    inventory_source: str = "modules"
    encoder: str | None = None
    decoder: str | None = None
    latent_shape: list[int] | None = None
    input_shape: list[int] = field(default_factory=list)
    preprocessing: str = "none"
    device: str = "cpu"
    dtype: str = "float32"
    notes: list[str] = field(default_factory=list)
    differentiable: bool = True  # False: the model runs without gradients (onnxruntime); gradient probes cannot run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _type_name(module: nn.Module) -> str:
    # TorchScript modules keep the Python class name in ``original_name``.
    return getattr(module, "original_name", None) or type(module).__name__


def _op_name(target: Any) -> str:
    if isinstance(target, str):
        return target
    name = getattr(target, "__name__", None) or str(target)
    # aten.relu.default → relu
    name = str(name).split(".")[-1] if "aten" not in str(target) else str(target).split(".")[-2]
    return name


def inventory(module: nn.Module) -> tuple[dict[str, int], str, set[str]]:
    """Count the leaf operations of ``module``.

    Returns ``(counts, source, functional_ops)``: ``source`` is ``"graph"`` when an FX/export
    graph was read (functional calls included), otherwise ``"modules"``.
    """
    graph = getattr(module, "graph", None)
    if isinstance(graph, torch.fx.Graph):
        return _graph_counts(graph), "graph", set()
    counts: Counter[str] = Counter()
    for _, sub in module.named_modules():
        if len(list(sub.children())) == 0:
            counts[_type_name(sub)] += 1
    functional: set[str] = set()
    source = "modules"
    if not isinstance(module, torch.jit.ScriptModule):
        try:
            traced = torch.fx.symbolic_trace(module)
        except Exception:  # untraceable control flow: the module tree is all we have
            traced = None
        if traced is not None:
            for node in traced.graph.nodes:
                if node.op in ("call_function", "call_method"):
                    functional.add(_op_name(node.target))
            source = "modules+fx"
    return dict(counts), source, functional


def _graph_counts(graph: torch.fx.Graph) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for node in graph.nodes:
        if node.op in ("call_function", "call_method"):
            counts[_op_name(node.target)] += 1
    return dict(counts)


def describe(module: nn.Module, fmt: str, source: str = "") -> ModelCard:
    counts, inv_source, functional = inventory(module)
    ops = set(counts) | functional
    unknown = sorted(
        op for op in ops if op not in PIECEWISE_LINEAR_OPS and op not in SMOOTH_ACTIVATIONS and op not in CONTAINERS
    )
    activations = sorted(op for op in ops if op in ACTIVATION_NAMES)
    smooth = any(op in SMOOTH_ACTIVATIONS for op in ops)
    n_params = sum(p.numel() for p in module.parameters())
    return ModelCard(
        format=fmt,
        source=source,
        n_parameters=int(n_params),
        layers=dict(sorted(counts.items())),
        activations=activations,
        unknown_ops=unknown,
        piecewise_linear=not smooth and not unknown,
        inventory_source=inv_source,
    )
