"""Checkpoint formats → :class:`AutoencoderAdapter`.

Safety rule: nothing is unpickled with arbitrary globals unless the caller passes
``trust_checkpoint=True``. Plain state dicts load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import io
import importlib
import importlib.util
import logging
import math
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, UntrustedCheckpointError
from ..zoo import MLPAutoencoder
from .adapter import AutoencoderAdapter, Standardizer, eval_mode, resolve_path
from .inventory import describe

log = logging.getLogger(__name__)

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "network", "weights", "params")
SPLIT_CANDIDATES = (("encoder", "decoder"), ("enc", "dec"), ("encode", "decode"))
TORCHSCRIPT_EXTRAS = "aeaudit_extras.pt"  # checkpoint extras inside a TorchScript archive (aeaudit harden)
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
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(mod_name, None)
            raise InputError(f"--arch {spec}: running {target} failed ({_one_line(exc)})") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise InputError(f"--arch {spec}: cannot import {target} ({exc}); is its folder on PYTHONPATH?") from None
        except Exception as exc:
            raise InputError(f"--arch {spec}: importing {target} failed ({_one_line(exc)})") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise InputError(f"--arch {spec}: {target} has no callable {factory_name!r}")
    try:
        model = factory()
    except Exception as exc:
        raise InputError(f"--arch {spec}: {factory_name}() failed ({_one_line(exc)}); it must build the model "
                         "with no arguments") from None
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
            raise InputError(f"{path}: not a readable torch.export program ({_one_line(exc)})") from None
        return program, "torch.export"
    if names and any("/code/" in n or n.endswith("constants.pkl") for n in names):
        try:
            return torch.jit.load(str(path), map_location="cpu"), "torchscript"
        except Exception as exc:
            raise InputError(f"{path}: not a readable TorchScript archive ({_one_line(exc)})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True), "state_dict"
    except Exception as exc:  # UnpicklingError: objects beyond tensors, refused below unless trusted
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


# Pickle protocol ≥ 2 opens with 0x80; joblib may compress its pickle with zlib, gzip, bz2, xz or lzma.
PICKLE_MAGICS = (b"\x80", b"\x78", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"]\x00\x00")


def _looks_like_pickle(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(6)
    return head.startswith(PICKLE_MAGICS)


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if first.startswith("The following operation failed in the TorchScript interpreter"):
        return _clip(text[-1], limit)  # TorchScript puts the real error, with its type, after its traceback
    return f"{type(exc).__name__}: {_clip(first, limit)}".strip()


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
        if fmt == "torchscript":
            extras = _torchscript_extras(path)

    program, input_hint = None, None
    if fmt == "torch.export":
        program, input_hint, batch = _export_signature(obj, src_name)
        module = program if batch is None else _FixedBatch(program, batch)
    elif isinstance(obj, dict) and (key := _module_key(obj)) is not None:  # trusted {"model": nn.Module, ...}
        module, fmt = obj[key], "pickled nn.Module"
        extras = {k: v for k, v in obj.items() if k != key}
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
    elif _is_pyod_detector(obj):
        module, preprocess, fmt = _from_pyod(obj)
        loss_kind = "pyod"
    elif isinstance(obj, nn.Module):
        module = obj
        fmt = fmt if fmt != "pickle" else "pickled nn.Module"
    else:
        raise InputError(f"{src_name}: holds a {type(obj).__name__}, not a model, state_dict or PyOD detector")

    module = eval_mode(module.to(device))
    for p in module.parameters():
        p.requires_grad_(False)
    adapter = _make_adapter(module, fmt, src_name, options, preprocess, loss_kind, input_hint, program)
    if loss_kind == "pyod" and isinstance(module, _MeanPath):
        adapter.card.notes.append("PyOD's decision_function samples the latent code; aeaudit scores this VAE at "
                                  "the mean code, PyOD's distance without the sampling noise")
    if isinstance(module, _FixedBatch):
        adapter.card.notes.append(f"exported with a fixed batch size of {module.batch}: run in padded chunks of that "
                                  "size; export with a dynamic batch dimension for speed")
    adapter.card.sha256 = sha
    adapter.card.device = str(device)
    adapter.checkpoint_extras = extras
    return adapter


def _module_key(obj: dict) -> str | None:
    return next((k for k in STATE_DICT_KEYS if isinstance(obj.get(k), nn.Module)), None)


def _export_signature(program: Any, src: str) -> tuple[nn.Module, tuple[int, ...] | None, int | None]:
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


class _FixedBatch(nn.Module):
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


def _torchscript_extras(path: Path) -> dict[str, Any]:
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
        raise InputError(f"{path}: unreadable {TORCHSCRIPT_EXTRAS} inside the TorchScript archive ({_one_line(exc)})") from None
    return extras if isinstance(extras, dict) else {}


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


def _make_adapter(module: nn.Module, fmt: str, src: str, options: LoadOptions, preprocess: Standardizer | None,
                  loss_kind: str, input_hint: tuple[int, ...] | None = None,
                  program: nn.Module | None = None) -> AutoencoderAdapter:
    """``program``: the exported graph, read for the layer inventory instead of its wrapper."""
    card = describe(program if program is not None else module, fmt, src)
    input_shape = options.input_shape or input_hint or _guess_input_shape(module)
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    if preprocess is not None:
        preprocess = preprocess.to(next(iter(module.parameters())).device, dtype)
        card.preprocessing = preprocess.describe()
    adapter = AutoencoderAdapter(module=module, input_shape=tuple(input_shape or ()), card=card,
                                 preprocess=preprocess, loss_kind=loss_kind)
    enc_path, dec_path, reason = _find_split(module, options, fmt)
    adapter._encoder_path, adapter._decoder_path, adapter.split_reason = enc_path, dec_path, reason
    if enc_path is not None:
        adapter.encoder = resolve_path(module, enc_path)
        adapter.decoder = resolve_path(module, dec_path)
    card.encoder, card.decoder = enc_path, dec_path
    card.dtype = str(dtype).replace("torch.", "")
    return adapter


def _find_split(module: nn.Module, options: LoadOptions, fmt: str) -> tuple[str | None, str | None, str]:
    if fmt == "torch.export":
        if options.encoder or options.decoder:
            raise InputError("--encoder/--decoder: a torch.export program keeps only forward(); save the model as "
                             "TorchScript or as a state_dict with --arch to name its encoder and decoder")
        return None, None, "torch.export programs keep only forward(); latent checks need TorchScript or a state_dict with --arch"
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
    return None, None, "no encoder/decoder (or enc/dec, encode/decode) found; name them with --encoder/--decoder"


def _guess_input_shape(module: nn.Module) -> tuple[int, ...] | None:
    """The input width of a model whose first layer is linear (TorchScript keeps the class name in
    ``original_name``); ``None`` when the first layer is a convolution, whose spatial size comes from the data."""
    for sub in module.modules():
        kind = getattr(sub, "original_name", None) or type(sub).__name__
        if kind == "Linear":
            return (int(sub.weight.shape[1]),)
        if kind in ("Conv1d", "Conv2d", "Conv3d"):
            return None
    return None


def conv_input_shape(module: nn.Module, per_sample: tuple[int, ...]) -> tuple[int, ...] | None:
    """For samples without a channel axis (``(784,)``, ``(28, 28)``) and a model whose first layer is a
    convolution, the one shape that fits: ``(C, L)`` for Conv1d, ``(C, S, S)`` for Conv2d when
    ``n / C`` is a perfect square; ``None`` when the samples already have the channel axis or nothing fits."""
    n = math.prod(per_sample)
    for sub in module.modules():
        kind = getattr(sub, "original_name", None) or type(sub).__name__
        if kind == "Linear":
            return None
        if kind in ("Conv1d", "Conv2d"):
            spatial = 1 if kind == "Conv1d" else 2
            channels = int(sub.weight.shape[1]) * int(getattr(sub, "groups", 1))
            if len(per_sample) == spatial + 1 or n % channels:
                return None
            if spatial == 1:
                return (channels, n // channels)
            side = math.isqrt(n // channels)
            return (channels, side, side) if side * side * channels == n else None
    return None


def _use_mean_path(adapter: AutoencoderAdapter) -> None:
    """A forward that samples (a VAE) gives a different loss on every call, so findings could not be
    re-verified: score ``decode(mean of encode(x))`` instead, or refuse when there is no such path."""
    module = adapter.module
    if isinstance(module, _MeanPath) or not (callable(getattr(module, "encode", None))
                                             and callable(getattr(module, "decode", None))):
        raise InputError("the model's forward is random (two calls on the same input differ) and it has no "
                         "encode()/decode() methods for a deterministic mean path; aeaudit needs a repeatable reconstruction")
    adapter.module = _MeanPath(module)
    adapter.output_index = None
    adapter._encoder_path, adapter._decoder_path = "encode", "decode"
    adapter.encoder, adapter.decoder = adapter.module.encode, adapter.module.decode
    adapter.card.encoder, adapter.card.decoder = "encode", "decode"
    adapter.card.notes.append("forward() samples (a VAE): scored deterministically as decode(mean of encode(x))")


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
    with torch.no_grad():
        _, again = adapter.reconstruct_model_space(x)
    if not torch.allclose(rec, again, rtol=1e-5, atol=1e-6):
        _use_mean_path(adapter)
        with torch.no_grad():
            _, rec = adapter.reconstruct_model_space(x)
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



