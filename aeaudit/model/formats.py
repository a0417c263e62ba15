"""Reading checkpoint files: format detection, the safe/trusted unpickling rule, and what each
format needs to run as a module (fixed-batch exports, PyOD detectors, VAE mean paths).

Safety rule: nothing is unpickled with arbitrary globals unless the caller passes
``trust=True``. Plain state dicts load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, UntrustedCheckpointError, one_line
from .adapter import Standardizer
from .archive import check_pt2, check_torchscript, is_onnx, is_safetensors, looks_like_pickle, open_zip, zip_kind
from .graph_guard import TRUST_HINT, check_exported_program, check_script_module

log = logging.getLogger(__name__)

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "network", "weights", "params")
TORCHSCRIPT_EXTRAS = "aeaudit_extras.pt"  # checkpoint extras inside a TorchScript archive (aeaudit harden)


def read_checkpoint(path: Path, trust: bool) -> tuple[Any, str]:
    """Return ``(object, format name)``. The format is told by the file's content, never its name; the
    file is read once, checked (:mod:`.archive`, :mod:`.graph_guard`), and torch loads those same bytes."""
    data = path.read_bytes()
    src = str(path)
    view = open_zip(data, src)
    kind = zip_kind(view) if view is not None else None
    if kind in ("torch.export", "torch.export (legacy)"):
        if kind == "torch.export":
            check_pt2(view, trust)
        elif not trust:
            raise UntrustedCheckpointError(
                f"{src}: refusing to load: a torch.export archive in the layout of torch < 2.8, whose weights torch "
                f"unpickles with weights_only=False; re-save it with torch.export.save of torch >= 2.8, or {TRUST_HINT}"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.export.load(io.BytesIO(data))
        except Exception as exc:
            raise InputError(f"{src}: not a readable torch.export program ({one_line(exc)})") from None
        check_exported_program(program, src, trust)
        return program, "torch.export"
    if kind == "torchscript":
        check_torchscript(view, trust)
        try:
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        except Exception as exc:
            raise InputError(f"{src}: not a readable TorchScript archive ({one_line(exc)})") from None
        check_script_module(module, src, trust)
        return module, "torchscript"
    if view is None and is_safetensors(data):
        return read_safetensors(data, src), "safetensors"
    if view is None and is_onnx(data):
        return data, "onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), "state_dict"
    except Exception as exc:  # UnpicklingError: objects beyond tensors, refused below unless trusted
        if view is None and not looks_like_pickle(data):
            raise InputError(
                f"{src}: not a checkpoint aeaudit can read ({one_line(exc)}); expected TorchScript, "
                ".pt2, ONNX, safetensors, a torch.save'd state_dict or a pickled model"
            ) from None
        safe_error = exc
    if not trust:
        raise UntrustedCheckpointError(
            f"{src}: refusing to load: this checkpoint holds pickled Python objects and unpickling can run "
            f"arbitrary code; {TRUST_HINT}"
        )
    log.warning("unpickling %s with full trust (--trust-checkpoint)", path)
    try:
        return pyod_envelope(torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)), "pickle"
    except Exception:
        pass
    try:
        import joblib

        return pyod_envelope(joblib.load(io.BytesIO(data))), "pickle"
    except Exception as exc:
        raise InputError(f"{src}: cannot unpickle ({one_line(exc)}; safe load said: {one_line(safe_error)})") from None


def read_safetensors(data: bytes, src: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (no pickling anywhere in the format); its architecture comes from ``--arch``."""
    try:
        from safetensors.torch import load as load_safetensors
    except ImportError:
        raise InputError(f"{src} is a safetensors file; install its reader: pip install 'aeaudit[formats]'") from None
    try:
        return load_safetensors(data)
    except Exception as exc:
        raise InputError(f"{src}: not a readable safetensors file ({one_line(exc)})") from None


def find_state_dict(obj: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Locate the weights inside a checkpoint dict; the rest is returned as extras."""
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    for key in STATE_DICT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            extras = {k: v for k, v in obj.items() if k != key}
            return inner, extras
    raise InputError(
        "checkpoint dict holds no state_dict: looked for a flat name→tensor dict and under the keys "
        f"{', '.join(STATE_DICT_KEYS)}; found keys {', '.join(map(str, list(obj)[:8]))}"
    )


def module_key(obj: dict) -> str | None:
    return next((k for k in STATE_DICT_KEYS if isinstance(obj.get(k), nn.Module)), None)


def export_signature(program: Any, src: str) -> tuple[nn.Module, tuple[int, ...] | None, int | None]:
    """The exported program as a module, its per-sample input shape, and its batch size when
    the export fixed one (``None`` when the batch dimension is dynamic)."""
    module = program.module()
    inputs = [n for n in module.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise InputError(f"{src}: the exported program takes {len(inputs)} inputs; an autoencoder takes one tensor")
    val = inputs[0].meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() == 0:
        return module, None, None
    dims = list(val.shape)
    per_sample = tuple(dims[1:]) if all(isinstance(d, int) for d in dims[1:]) else None
    batch = dims[0] if isinstance(dims[0], int) else None
    return module, per_sample, batch


class FixedBatch(nn.Module):
    """Runs a program exported with a fixed batch size on any batch: pads the batch to a
    multiple of that size and runs it chunk by chunk."""

    def __init__(self, program: nn.Module, batch: int):
        super().__init__()
        self.program = program
        self.batch = batch

    def forward(self, x: torch.Tensor):
        n = x.shape[0]
        if n == self.batch:
            return self.program(x)
        pad = (-n) % self.batch
        if pad:
            x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
        outs = [self.program(chunk) for chunk in x.split(self.batch)]
        if isinstance(outs[0], (tuple, list)):
            return tuple(torch.cat(parts)[:n] for parts in zip(*outs))
        return torch.cat(outs)[:n]


def torchscript_extras(path: Path) -> dict[str, Any]:
    """Checkpoint extras stored inside a TorchScript archive as ``extra/aeaudit_extras.pt``
    (written by ``aeaudit harden``); read with ``weights_only=True``."""
    with zipfile.ZipFile(path) as zf:
        name = next((n for n in zf.namelist() if n.endswith(f"/extra/{TORCHSCRIPT_EXTRAS}")), None)
        if name is None:
            return {}
        blob = zf.read(name)
    try:
        extras = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(
            f"{path}: unreadable {TORCHSCRIPT_EXTRAS} inside the TorchScript archive ({one_line(exc)})"
        ) from None
    return extras if isinstance(extras, dict) else {}


def pyod_envelope(obj: Any) -> Any:
    """The detector inside ``pyod.utils.persistence.save``'s envelope (a dict recording library versions
    beside ``"model"``); any other object as it is."""
    if isinstance(obj, dict) and "_pyod_persistence_version" in obj and is_pyod_detector(obj.get("model")):
        return obj["model"]
    return obj


def is_pyod_detector(obj: Any) -> bool:
    return type(obj).__module__.startswith("pyod.") and isinstance(getattr(obj, "model", None), nn.Module)


class MeanPath(nn.Module):
    """Deterministic reconstruction ``decode(mean(encode(x)))`` for models whose forward samples (VAEs)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def encode(self, x):
        out = self.model.encode(x)
        return out[0] if isinstance(out, (tuple, list)) else out

    def decode(self, z):
        return self.model.decode(z)

    def forward(self, x):
        return self.decode(self.encode(x))


def from_pyod(det: Any) -> tuple[nn.Module, Standardizer | None, str]:
    model = det.model
    name = type(det).__name__
    if hasattr(model, "encode") and hasattr(model, "decode"):
        model = MeanPath(model)
    preprocess = None
    if getattr(det, "preprocessing", False) and getattr(det, "X_mean", None) is not None:
        preprocess = Standardizer(
            torch.as_tensor(det.X_mean, dtype=torch.float32), torch.as_tensor(det.X_std, dtype=torch.float32)
        )
    return model, preprocess, f"pyod.{name}"
