"""Checkpoint formats → :class:`AutoencoderAdapter`.

Safety rule: nothing is unpickled with arbitrary globals unless the caller passes
``trust_checkpoint=True``. Plain state dicts load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import pickle
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, UntrustedCheckpointError
from ..zoo import MLPAutoencoder
from .adapter import AutoencoderAdapter, Standardizer, resolve_path
from .inventory import describe

log = logging.getLogger(__name__)

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "network", "weights", "params")
SPLIT_CANDIDATES = (("encoder", "decoder"), ("enc", "dec"), ("encode", "decode"))
TRUST_HINT = "pass --trust-checkpoint (trust_checkpoint=True) only if you trust where the file came from"


@dataclass(frozen=True)
class LoadOptions:
    """How to turn a checkpoint into an autoencoder (the model-loading CLI flags)."""

    arch: str | None = None
    activation: str = "relu"
    output_activation: str = "identity"
    trust_checkpoint: bool = False
    encoder: str | None = None
    decoder: str | None = None
    input_shape: tuple[int, ...] | None = None
    device: str = "auto"


def resolve_device(spec: str) -> torch.device:
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise InputError(f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {spec}: no CUDA GPU is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type not in ("cpu", "mps"):
        raise InputError(f"--device {spec!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- architectures
def build_architecture(spec: str, activation: str = "relu", output_activation: str = "identity") -> nn.Module:
    """``mlp:2,5,1,5,2`` | ``path/file.py:factory`` | ``package.module:factory`` → a fresh module.

    Importing a file or module named with ``--arch`` runs its code: it is the user's own code.
    """
    if spec.startswith("mlp:"):
        try:
            sizes = [int(s) for s in spec[4:].split(",") if s.strip()]
            return MLPAutoencoder(sizes, activation=activation, output_activation=output_activation)
        except ValueError as exc:
            raise InputError(f"--arch {spec}: {exc}; write it like mlp:2,5,1,5,2") from None
    if ":" not in spec:
        raise InputError(f"--arch {spec!r}: expected mlp:SIZES, path/to/file.py:factory or package.module:factory")
    target, factory_name = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise InputError(f"--arch {spec}: file {target} not found")
        mod_name = f"_aeaudit_arch_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise InputError(f"--arch {spec}: cannot import {target} ({exc})") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise InputError(f"--arch {spec}: {target} has no callable {factory_name!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise InputError(f"--arch {spec}: {factory_name}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


# --------------------------------------------------------------------------- raw loading
def _zip_names(path: Path) -> list[str] | None:
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except zipfile.BadZipFile:
        return None


def _read_checkpoint(path: Path, trust: bool) -> tuple[Any, str]:
    """Return ``(object, format name)``."""
    names = _zip_names(path)
    if path.suffix == ".pt2" or (names and any("serialized_exported_program" in n for n in names)):
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise InputError(f"{path}: not a readable torch.export program ({type(exc).__name__}: {exc})".splitlines()[0]) from None
        return program, "torch.export"
    if names and any("/code/" in n or n.endswith("constants.pkl") for n in names):
        try:
            return torch.jit.load(str(path), map_location="cpu"), "torchscript"
        except Exception as exc:
            raise InputError(f"{path}: not a readable TorchScript archive ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True), "state_dict"
    except pickle.UnpicklingError as exc:
        safe_error = exc
    except Exception as exc:
        if names is None and not _looks_like_pickle(path):
            raise InputError(f"{path}: not a checkpoint aeaudit can read ({_one_line(exc)}); "
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
        raise InputError(f"{path}: cannot unpickle ({_one_line(exc)}; safe load said: {_one_line(safe_error)})") from None


def _looks_like_pickle(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(2)
    return len(head) == 2 and head[0] == 0x80


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def _find_state_dict(obj: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
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


# --------------------------------------------------------------------------- public entry
def load_model(source: str | Path | nn.Module, options: LoadOptions | None = None, **overrides: Any) -> AutoencoderAdapter:
    """Load any supported autoencoder into an :class:`AutoencoderAdapter`.

    ``source`` is a path (TorchScript, ``.pt2``, a state_dict checkpoint with ``arch``, a
    pickled module or PyOD detector with ``trust_checkpoint``) or an ``nn.Module``.
    Keyword overrides set :class:`LoadOptions` fields.
    """
    options = options or LoadOptions()
    if overrides:
        options = LoadOptions(**{**options.__dict__, **overrides})
    device = resolve_device(options.device)
    extras: dict[str, Any] = {}
    preprocess = None
    loss_kind = "mse"
    src_name, sha = "<in-memory module>", ""
    if isinstance(source, nn.Module):
        obj, fmt = source, "nn.Module (in memory)"
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"model file {path} not found")
        if path.stat().st_size == 0:
            raise InputError(f"model file {path} is empty")
        src_name, sha = str(path), file_sha256(path)
        obj, fmt = _read_checkpoint(path, options.trust_checkpoint)

    if fmt == "torch.export":
        module = obj.module()
    elif isinstance(obj, dict):
        state, extras = _find_state_dict(obj)
        if options.arch is None:
            raise InputError(
                f"{src_name} is a state_dict ({len(state)} tensors); give its architecture with "
                "--arch mlp:SIZES, --arch path/to/file.py:factory or --arch package.module:factory")
        module = build_architecture(options.arch, options.activation, options.output_activation)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = " ".join(str(exc).split())[:300]
            raise InputError(f"{src_name}: weights do not fit --arch {options.arch}: {first}") from None
        fmt = "state_dict" if fmt == "state_dict" else fmt
    elif _is_pyod_detector(obj):
        module, preprocess, fmt = _from_pyod(obj)
        loss_kind = "pyod"
    elif isinstance(obj, nn.Module):
        module = obj
        fmt = fmt if fmt != "pickle" else "pickled nn.Module"
    else:
        raise InputError(f"{src_name}: holds a {type(obj).__name__}, not a model, state_dict or PyOD detector")

    module = module.to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    adapter = _make_adapter(module, fmt, src_name, options, preprocess, loss_kind)
    adapter.card.sha256 = sha
    adapter.card.device = str(device)
    adapter.checkpoint_extras = extras
    return adapter


def _is_pyod_detector(obj: Any) -> bool:
    return type(obj).__module__.startswith("pyod.") and isinstance(getattr(obj, "model", None), nn.Module)


class _MeanPath(nn.Module):
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


def _from_pyod(det: Any) -> tuple[nn.Module, Standardizer | None, str]:
    model = det.model
    name = type(det).__name__
    if hasattr(model, "encode") and hasattr(model, "decode"):
        model = _MeanPath(model)
    preprocess = None
    if getattr(det, "preprocessing", False) and getattr(det, "X_mean", None) is not None:
        preprocess = Standardizer(torch.as_tensor(det.X_mean, dtype=torch.float32),
                                  torch.as_tensor(det.X_std, dtype=torch.float32))
    return model, preprocess, f"pyod.{name}"


def _make_adapter(module: nn.Module, fmt: str, src: str, options: LoadOptions,
                  preprocess: Standardizer | None, loss_kind: str) -> AutoencoderAdapter:
    card = describe(module, fmt, src)
    input_shape = options.input_shape or _guess_input_shape(module)
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    if preprocess is not None:
        preprocess = preprocess.to(next(iter(module.parameters())).device, dtype)
        card.preprocessing = preprocess.describe()
    adapter = AutoencoderAdapter(module=module, input_shape=tuple(input_shape or ()), card=card,
                                 preprocess=preprocess, loss_kind=loss_kind)
    enc_path, dec_path, reason = _find_split(module, options)
    adapter._encoder_path, adapter._decoder_path, adapter.split_reason = enc_path, dec_path, reason
    if enc_path is not None:
        adapter.encoder = resolve_path(module, enc_path)
        adapter.decoder = resolve_path(module, dec_path)
    card.encoder, card.decoder = enc_path, dec_path
    card.dtype = str(dtype).replace("torch.", "")
    return adapter


def _find_split(module: nn.Module, options: LoadOptions) -> tuple[str | None, str | None, str]:
    if options.encoder or options.decoder:
        if not (options.encoder and options.decoder):
            raise InputError("give both --encoder and --decoder, or neither")
        for p in (options.encoder, options.decoder):
            try:
                resolve_path(module, p)
            except AttributeError:
                raise InputError(f"--encoder/--decoder: the model has no attribute {p!r}") from None
        return options.encoder, options.decoder, ""
    for enc, dec in SPLIT_CANDIDATES:
        if callable(getattr(module, enc, None)) and callable(getattr(module, dec, None)):
            return enc, dec, ""
    if isinstance(module, torch.fx.GraphModule):
        return None, None, "torch.export programs keep only forward(); latent checks need --encoder/--decoder on another format"
    return None, None, "no encoder/decoder (or enc/dec, encode/decode) found; name them with --encoder/--decoder"


def _guess_input_shape(module: nn.Module) -> tuple[int, ...] | None:
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            return (sub.in_features,)
        if isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return None  # spatial size unknown until data arrives
    return None


def finalize_shapes(adapter: AutoencoderAdapter, sample: torch.Tensor) -> None:
    """Check the model on a data sample: output shape must equal input shape; find the latent shape.

    Drops an encoder/decoder split that does not reproduce ``forward`` (with the reason).
    """
    x = sample[:2].to(adapter.device, adapter.dtype)
    try:
        with torch.no_grad():
            xm, rec = adapter.reconstruct_model_space(x)
            if isinstance(rec, (tuple, list)):
                adapter.output_index = 0
                rec = rec[0]
    except Exception as exc:
        raise InputError(f"the model fails on data of shape {tuple(x.shape[1:])}: {_one_line(exc)}; "
                         "check --input-shape") from None
    if not isinstance(rec, torch.Tensor) or tuple(rec.shape) != tuple(xm.shape):
        got = tuple(rec.shape[1:]) if isinstance(rec, torch.Tensor) else type(rec).__name__
        raise InputError(f"the model's output shape {got} differs from its input shape {tuple(xm.shape[1:])}: "
                         "aeaudit audits autoencoders, whose output reconstructs the input")
    adapter.card.input_shape = list(adapter.input_shape)
    if adapter.has_latent:
        try:
            with torch.no_grad():
                z = adapter.encoder(xm)
                if isinstance(z, (tuple, list)):  # VAE-style encoders: take the mean
                    path = adapter._encoder_path
                    adapter._encoder_path = f"{path}[0]"
                    adapter.encoder = resolve_path(adapter.module, adapter._encoder_path)
                    z = z[0]
                again = adapter.decoder(z)
            ok = tuple(again.shape) == tuple(rec.shape) and torch.allclose(again, rec, rtol=1e-4, atol=1e-5)
        except Exception as exc:
            ok, why = False, _one_line(exc)
        else:
            why = "decoder(encoder(x)) differs from forward(x)"
        if ok:
            adapter.latent_shape = tuple(z.shape[1:])
            adapter.card.latent_shape = list(adapter.latent_shape)
        else:
            adapter.split_reason = f"encoder/decoder split {adapter._encoder_path}/{adapter._decoder_path} rejected: {why}"
            adapter.encoder = adapter.decoder = None
            adapter._encoder_path = adapter._decoder_path = None
            adapter.card.encoder = adapter.card.decoder = None
    if not adapter.has_latent:
        adapter.card.notes.append(f"latent checks skipped: {adapter.split_reason}")



