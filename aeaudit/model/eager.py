"""Eager twins of TorchScript modules built from standard layers.

TorchScript runs neither Python forward hooks nor ``torch.func``, so per-sample gradients on a
scripted model take one backward pass per sample. A scripted ``nn.Sequential`` of standard
``torch.nn`` layers keeps each layer's class name (``original_name``), its constructor settings
and its weights, and runs its children in order; rebuilding it as an eager module gives the same
function with hooks available. The caller checks the twin against the original on real inputs
before using it.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict

import torch
from torch import nn


def _kind(module: nn.Module) -> str:
    return getattr(module, "original_name", None) or type(module).__name__


def eager_twin(module: nn.Module) -> nn.Module | None:
    """An eager copy of ``module`` (a ``Sequential`` tree of standard ``torch.nn`` layers, scripted or
    not) in eval mode, or ``None`` when it holds anything else."""
    kind = _kind(module)
    if kind == "Sequential":
        children = OrderedDict()
        for name, child in module.named_children():
            twin = eager_twin(child)
            if twin is None:
                return None
            children[name] = twin
        return nn.Sequential(children).eval()
    cls = getattr(nn, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)) or any(True for _ in module.children()):
        return None
    kwargs = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name in ("self", "device", "dtype") or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name == "bias" and param.annotation in (bool, "bool"):
            kwargs[name] = getattr(module, "bias", None) is not None
        elif hasattr(module, name):
            kwargs[name] = getattr(module, name)
        elif param.default is inspect.Parameter.empty:
            return None
    try:
        twin = cls(**kwargs)
        twin.load_state_dict(module.state_dict())
    except Exception:  # a constructor or state this table does not cover: no twin
        return None
    params = list(module.parameters()) + list(module.buffers())
    if params:
        twin = twin.to(params[0].device, params[0].dtype if params[0].is_floating_point() else None)
    return twin.eval().requires_grad_(False)


def matches(twin: nn.Module, original, x: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    """Whether ``twin`` and ``original`` give the same output on ``x``."""
    try:
        with torch.no_grad():
            a, b = twin(x), original(x)
        return isinstance(a, torch.Tensor) and a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=atol))
    except Exception:
        return False
