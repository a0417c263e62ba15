"""Any supported checkpoint → :class:`AutoencoderAdapter`: the public entry ``load_model``.

Reading files (and the rule that nothing is unpickled without ``trust_checkpoint=True``) lives in
:mod:`.formats`, ``--arch`` in :mod:`.architecture`, shape checks on data in :mod:`.shapes`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from .adapter import AutoencoderAdapter, Standardizer, eval_mode, resolve_path
from .architecture import build_architecture
from .formats import (FixedBatch, MeanPath, export_signature, find_state_dict, from_pyod, is_pyod_detector,
                      module_key, read_checkpoint, torchscript_extras)
from .inventory import describe
from .onnx_import import load_onnx
from .shapes import guess_input_shape

SPLIT_CANDIDATES = (("encoder", "decoder"), ("enc", "dec"), ("encode", "decode"))


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
        obj, fmt = read_checkpoint(path, options.trust_checkpoint)
        if fmt == "torchscript":
            extras = torchscript_extras(path)

    program, input_hint, format_note = None, None, ""
    if fmt == "onnx":
        module, input_hint, format_note = load_onnx(obj, path)
    elif fmt == "torch.export":
        program, input_hint, batch = export_signature(obj, src_name)
        module = program if batch is None else FixedBatch(program, batch)
    elif isinstance(obj, dict) and (key := module_key(obj)) is not None:  # trusted {"model": nn.Module, ...}
        module, fmt = obj[key], "pickled nn.Module"
        extras = {k: v for k, v in obj.items() if k != key}
    elif isinstance(obj, dict):
        state, extras = find_state_dict(obj)
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
    elif is_pyod_detector(obj):
        module, preprocess, fmt = from_pyod(obj)
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
    if loss_kind == "pyod" and isinstance(module, MeanPath):
        adapter.card.notes.append("PyOD's decision_function samples the latent code; aeaudit scores this VAE at "
                                  "the mean code, PyOD's distance without the sampling noise")
    if isinstance(module, FixedBatch):
        adapter.card.notes.append(f"exported with a fixed batch size of {module.batch}: run in padded chunks of that "
                                  "size; export with a dynamic batch dimension for speed")
    if format_note:
        adapter.card.notes.append(format_note)
    adapter.card.differentiable = getattr(module, "differentiable", True)
    adapter.card.sha256 = sha
    adapter.card.device = str(device)
    adapter.checkpoint_extras = extras
    return adapter


def _make_adapter(module: nn.Module, fmt: str, src: str, options: LoadOptions, preprocess: Standardizer | None,
                  loss_kind: str, input_hint: tuple[int, ...] | None = None,
                  program: nn.Module | None = None) -> AutoencoderAdapter:
    """``program``: the exported graph, read for the layer inventory instead of its wrapper."""
    card = describe(program if program is not None else module, fmt, src)
    input_shape = options.input_shape or input_hint or guess_input_shape(module)
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
