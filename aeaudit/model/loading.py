"""Any supported checkpoint → a finished :class:`AutoencoderAdapter`: the public entry ``load_model``.

Loading has two steps. :func:`read_model` turns a file (or an in-memory module) into a
:class:`RawModel` — reading files, and the rule that nothing is unpickled without
``trust_checkpoint=True``, live in :mod:`.formats`, ``--arch`` in :mod:`.architecture`. :func:`bind`
then meets the model with the normal data: it settles the input layout the data is shaped to, the
output element, a VAE's mean path and the encoder/decoder split (:mod:`.shapes`), and returns the
adapter, which is not changed after that.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import load_data, shape_samples
from ..errors import InputError
from .adapter import AutoencoderAdapter, Standardizer, eval_mode, resolve_path
from .architecture import build_architecture
from .formats import (
    FixedBatch,
    MeanPath,
    export_signature,
    find_state_dict,
    from_pyod,
    is_pyod_detector,
    module_key,
    read_checkpoint,
    torchscript_extras,
)
from .inventory import describe
from .layout import data_shape_fits
from .onnx_import import load_onnx
from .shapes import conv_input_shape, guess_input_shape, settle

SPLIT_CANDIDATES = (("encoder", "decoder"), ("enc", "dec"), ("encode", "decode"))
FLOAT32_MAX = float(np.finfo(np.float32).max)


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

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


@dataclass
class RawModel:
    """A checkpoint as read, before it has met the data."""

    module: nn.Module
    format: str
    source: str = "<in-memory module>"
    sha256: str = ""
    extras: dict[str, Any] = field(default_factory=dict)
    preprocess: Standardizer | None = None
    loss_kind: str = "mse"
    input_hint: tuple[int, ...] | None = None
    program: nn.Module | None = None  # an exported graph: read for the layer inventory instead of its wrapper
    notes: list[str] = field(default_factory=list)


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


def read_model(source: str | Path | nn.Module, options: LoadOptions) -> RawModel:
    """Read a checkpoint file (or take an in-memory module) as a module in eval mode on the device,
    its weights frozen. Nothing is unpickled unless ``options.trust_checkpoint``."""
    if isinstance(source, nn.Module):
        raw = RawModel(module=source, format="nn.Module (in memory)")
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"model file {path} not found")
        if path.stat().st_size == 0:
            raise InputError(f"model file {path} is empty")
        obj, fmt = read_checkpoint(path, options.trust_checkpoint)
        raw = _from_checkpoint(obj, fmt, str(path), options)
        raw.sha256 = file_sha256(path)
        if fmt == "torchscript":
            raw.extras = torchscript_extras(path)
    device = resolve_device(options.device)
    raw.module = eval_mode(raw.module.to(device))
    for p in raw.module.parameters():
        p.requires_grad_(False)
    return raw


def _from_checkpoint(obj: Any, fmt: str, src: str, options: LoadOptions) -> RawModel:
    if fmt == "onnx":
        module, hint, note = load_onnx(obj, Path(src))
        return RawModel(module, fmt, src, input_hint=hint, notes=[note] if note else [])
    if fmt == "torch.export":
        program, hint, batch = export_signature(obj, src)
        raw = RawModel(
            program if batch is None else FixedBatch(program, batch), fmt, src, input_hint=hint, program=program
        )
        if batch is not None:
            raw.notes.append(
                f"exported with a fixed batch size of {batch}: run in padded chunks of that size; "
                "export with a dynamic batch dimension for speed"
            )
        return raw
    if isinstance(obj, dict) and (key := module_key(obj)) is not None:  # trusted {"model": nn.Module, ...}
        return RawModel(obj[key], "pickled nn.Module", src, extras={k: v for k, v in obj.items() if k != key})
    if isinstance(obj, dict):
        state, extras = find_state_dict(obj)
        if options.arch is None:
            raise InputError(
                f"{src} is a state_dict ({len(state)} tensors); give its architecture with "
                "--arch mlp:SIZES, --arch path/to/file.py:factory or --arch package.module:factory"
            )
        module = build_architecture(options.arch, options.activation, options.output_activation)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = " ".join(str(exc).split())[:300]
            raise InputError(f"{src}: weights do not fit --arch {options.arch}: {first}") from None
        return RawModel(module, fmt, src, extras=extras)
    if is_pyod_detector(obj):
        module, preprocess, name = from_pyod(obj)
        raw = RawModel(module, name, src, preprocess=preprocess, loss_kind="pyod")
        if isinstance(module, MeanPath):
            raw.notes.append(
                "PyOD's decision_function samples the latent code; aeaudit scores this VAE at "
                "the mean code, PyOD's distance without the sampling noise"
            )
        return raw
    if isinstance(obj, nn.Module):
        return RawModel(obj, fmt if fmt != "pickle" else "pickled nn.Module", src)
    raise InputError(f"{src}: holds a {type(obj).__name__}, not a model, state_dict or PyOD detector")


def _find_split(module: nn.Module, options: LoadOptions, fmt: str) -> tuple[str | None, str | None, str]:
    if fmt == "torch.export":
        if options.encoder or options.decoder:
            raise InputError(
                "--encoder/--decoder: a torch.export program keeps only forward(); save the model as "
                "TorchScript or as a state_dict with --arch to name its encoder and decoder"
            )
        return (
            None,
            None,
            "torch.export programs keep only forward(); latent checks need TorchScript or a state_dict with --arch",
        )
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


def input_layout(raw: RawModel, data: np.ndarray, options: LoadOptions) -> tuple[int, ...] | None:
    """The per-sample shape the data is given to the model in: ``--input-shape``; else the data's own
    shape when the model takes it; else the exported signature, the width of a first linear layer,
    or the channel layout a first convolution needs."""
    if options.input_shape:
        return options.input_shape
    dtype = next((p.dtype for p in raw.module.parameters() if p.is_floating_point()), torch.float32)
    sample = torch.as_tensor(np.array(data[:2])).to(_device(raw.module), dtype)
    preprocess = raw.preprocess.to(_device(raw.module), dtype) if raw.preprocess is not None else None
    if data_shape_fits(raw.module, preprocess, sample):
        return tuple(data.shape[1:])
    return raw.input_hint or guess_input_shape(raw.module) or conv_input_shape(raw.module, tuple(data.shape[1:]))


def bind(raw: RawModel, data: np.ndarray, options: LoadOptions) -> tuple[AutoencoderAdapter, np.ndarray]:
    """Meet the model with normal ``data``: shape the data to the model's input layout and settle the
    model on a sample. Returns ``(finished adapter, data reshaped to its input shape)``."""
    data, shape = shape_samples(data, input_layout(raw, data, options), "normal data")
    card = describe(raw.program if raw.program is not None else raw.module, raw.format, raw.source)
    dtype = next((p.dtype for p in raw.module.parameters() if p.is_floating_point()), torch.float32)
    _check_range(data, dtype)
    preprocess = raw.preprocess.to(_device(raw.module), dtype) if raw.preprocess is not None else None
    if preprocess is not None:
        card.preprocessing = preprocess.describe()
    enc_path, dec_path, reason = _find_split(raw.module, options, raw.format)
    card.notes.extend(raw.notes)
    card.differentiable = getattr(raw.module, "differentiable", True)
    card.sha256, card.device, card.dtype = raw.sha256, str(_device(raw.module)), str(dtype).replace("torch.", "")
    adapter = AutoencoderAdapter(
        module=raw.module,
        input_shape=tuple(shape),
        card=card,
        encoder_path=enc_path,
        decoder_path=dec_path,
        preprocess=preprocess,
        split_reason=reason,
        loss_kind=raw.loss_kind,
        checkpoint_extras=raw.extras,
    )
    return settle(adapter, torch.as_tensor(np.array(data[:2]))), data


def _device(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _check_range(data: np.ndarray, dtype: torch.dtype) -> None:
    """Data a float32 model would see as inf is an input error, not a model defect."""
    if dtype == torch.float32 and np.issubdtype(data.dtype, np.floating) and np.finfo(data.dtype).max > FLOAT32_MAX:
        peak = float(np.max(np.abs(data[: min(len(data), 100_000)])))
        if peak > FLOAT32_MAX:
            raise InputError(
                f"normal data holds values up to {peak:.3g}, beyond float32's range ({FLOAT32_MAX:.3g}) "
                "that the model computes in; rescale the data the way the model was trained"
            )


def open_model(
    source: str | Path | nn.Module | AutoencoderAdapter, data: np.ndarray, options: LoadOptions
) -> tuple[AutoencoderAdapter, np.ndarray]:
    """The one entry point of the commands: a finished adapter for ``source`` and ``data`` shaped to
    its input. An adapter passed in is already finished; only the data is shaped."""
    if isinstance(source, AutoencoderAdapter):
        data, _ = shape_samples(data, source.input_shape, "normal data")
        return source, data
    return bind(read_model(source, options), data, options)


def load_model(
    source: str | Path | nn.Module,
    data: Any = None,
    options: LoadOptions | None = None,
    *,
    data_key: str | None = None,
    **overrides: Any,
) -> AutoencoderAdapter:
    """Load any supported autoencoder as a finished :class:`AutoencoderAdapter`.

    ``source``: a path (TorchScript, ``.pt2``, a state_dict checkpoint with ``arch``, a pickled module
    or PyOD detector with ``trust_checkpoint``) or an ``nn.Module``. ``data``: normal samples (a path
    or an array) the model is settled on; without it, one zero sample of the input shape the model
    declares (a first linear layer, an exported signature, or ``input_shape``). Keyword overrides set
    :class:`LoadOptions` fields.
    """
    options = options or LoadOptions()
    unknown = sorted(set(overrides) - LoadOptions.field_names())
    if unknown:
        raise InputError(f"load_model: unknown option(s) {', '.join(unknown)}")
    if overrides:
        options = LoadOptions(**{**options.__dict__, **overrides})
    raw = read_model(source, options)
    if data is None:
        shape = options.input_shape or raw.input_hint or guess_input_shape(raw.module)
        if shape is None:
            raise InputError(
                "load_model: the model declares no input shape; pass data= (normal samples) or input_shape="
            )
        arr = np.zeros((2, *shape), dtype=np.float32)
    else:
        arr = load_data(data, key=data_key, what="normal data")
    return bind(raw, arr, options)[0]
