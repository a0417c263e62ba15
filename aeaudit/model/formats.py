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

log = logging.getLogger(__name__)

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "network", "weights", "params")
TORCHSCRIPT_EXTRAS = "aeaudit_extras.pt"  # checkpoint extras inside a TorchScript archive (aeaudit harden)
TRUST_HINT = "pass --trust-checkpoint (trust_checkpoint=True) only if you trust where the file came from"


def _zip_names(path: Path) -> list[str] | None:
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except zipfile.BadZipFile:
        return None


def read_checkpoint(path: Path, trust: bool) -> tuple[Any, str]:
    """Return ``(object, format name)``."""
    names = _zip_names(path)
    if path.suffix == ".pt2" or (names and any("serialized_exported_program" in n for n in names)):
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise InputError(f"{path}: not a readable torch.export program ({one_line(exc)})") from None
        return program, "torch.export"
    if names and any("/code/" in n or n.endswith("constants.pkl") for n in names):
        try:
            return torch.jit.load(str(path), map_location="cpu"), "torchscript"
        except Exception as exc:
            raise InputError(f"{path}: not a readable TorchScript archive ({one_line(exc)})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True), "state_dict"
    except Exception as exc:  # UnpicklingError: objects beyond tensors, refused below unless trusted
        if names is None and not _looks_like_pickle(path):
            raise InputError(f"{path}: not a checkpoint aeaudit can read ({one_line(exc)}); "
                             "expected TorchScript, .pt2, a torch.save'd state_dict or a pickled model") from None
        safe_error = exc
    if not trust:
        raise UntrustedCheckpointError(
            f"{path}: refusing to load: this checkpoint holds pickled Python objects and unpickling can run "
            f"arbitrary code; {TRUST_HINT}")
    log.warning("unpickling %s with full trust (--trust-checkpoint)", path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False), "pickle"
    except Exception:
        pass
    try:
        import joblib

        return joblib.load(path), "pickle"
    except Exception as exc:
        raise InputError(f"{path}: cannot unpickle ({one_line(exc)}; safe load said: {one_line(safe_error)})") from None


# Pickle protocol ≥ 2 opens with 0x80; joblib may compress its pickle with zlib, gzip, bz2, xz or lzma.
PICKLE_MAGICS = (b"\x80", b"\x78", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"]\x00\x00")


def _looks_like_pickle(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(6)
    return head.startswith(PICKLE_MAGICS)


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
        f"{', '.join(STATE_DICT_KEYS)}; found keys {', '.join(map(str, list(obj)[:8]))}")


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
        raise InputError(f"{path}: unreadable {TORCHSCRIPT_EXTRAS} inside the TorchScript archive ({one_line(exc)})") from None
    return extras if isinstance(extras, dict) else {}


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
        preprocess = Standardizer(torch.as_tensor(det.X_mean, dtype=torch.float32),
                                  torch.as_tensor(det.X_std, dtype=torch.float32))
    return model, preprocess, f"pyod.{name}"
