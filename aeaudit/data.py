"""Loading and validating the normal data (and optional known anomalies).

Every failure is an :class:`InputError` with one line: what is wrong, in which file, and
what to do about it.
"""

from __future__ import annotations

import csv
import io
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError

SUFFIXES = (".npy", ".npz", ".csv", ".tsv", ".txt", ".pt", ".pth")


def load_data(source: str | Path | np.ndarray | torch.Tensor, key: str | None = None, what: str = "data") -> np.ndarray:
    """Read an array of samples (first axis = samples) and validate it.

    ``.npy`` is memory-mapped; ``.npz`` needs ``key`` when it holds several arrays;
    ``.csv`` / ``.tsv`` must be numeric (a header row is detected and skipped); ``.pt``
    holds a tensor (or a dict with ``key``), read with ``weights_only=True``.
    """
    if isinstance(source, torch.Tensor):
        arr, name = source.detach().cpu().numpy(), f"<{what} tensor>"
    elif isinstance(source, np.ndarray):
        arr, name = source, f"<{what} array>"
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise InputError(f"{what} file {path} not found")
        if path.stat().st_size == 0:
            raise InputError(f"{what} file {path} is empty")
        arr = _read(path, key)
    return validate(arr, name)


def _read(path: Path, key: str | None) -> Any:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            with open(path, "rb") as fh:
                if fh.read(6) != b"\x93NUMPY":
                    raise InputError(f"{path}: not a .npy file (no NumPy header); save it with numpy.save")
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                names = list(npz.files)
                if key is None:
                    if len(names) != 1:
                        raise InputError(f"{path} holds arrays {', '.join(names)}; choose one with --data-key")
                    key = names[0]
                if key not in names:
                    raise InputError(f"{path} has no array {key!r}; it holds {', '.join(names)}")
                return npz[key]
        if suffix in (".csv", ".tsv", ".txt"):
            return _read_table(path, "\t" if suffix == ".tsv" else None)
        if suffix in (".pt", ".pth"):
            with warnings.catch_warnings():  # the weights-only unpickler's protocol warning is noise here
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                if key is None or key not in obj:
                    raise InputError(
                        f"{path} holds a dict with keys {', '.join(map(str, obj))}; choose one with --data-key"
                    )
                obj = obj[key]
            if not isinstance(obj, torch.Tensor):
                raise InputError(f"{path} holds a {type(obj).__name__}, not a tensor")
            return obj.detach().float().numpy() if obj.dtype == torch.bfloat16 else obj.detach().numpy()
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise InputError(f"{path}: unreadable or truncated {suffix} file ({type(exc).__name__}: {first})") from None
    except Exception as exc:  # the pickle guard of torch.load and other format errors
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise InputError(f"{path}: cannot read ({type(exc).__name__}: {first})") from None
    raise InputError(f"{path}: unsupported data format {suffix or '(none)'}; use one of {', '.join(SUFFIXES)}")


def _read_table(path: Path, delimiter: str | None) -> np.ndarray:
    text = path.read_text(encoding="utf-8", errors="strict")
    sample = text[:4096]
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t ").delimiter
        except csv.Error:
            delimiter = ","
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"{path} holds no rows")
    start = 0 if _is_numeric_row(rows[0]) else 1  # a non-numeric first row is a header
    body = rows[start:]
    if not body:
        raise InputError(f"{path} holds a header but no data rows")
    width = len(body[0])
    for i, row in enumerate(body, start=start + 1):
        if len(row) != width:
            raise InputError(f"{path}: row {i} has {len(row)} columns, expected {width}")
        if not _is_numeric_row(row):
            bad = next(c for c in row if not _is_number(c))
            raise InputError(
                f"{path}: row {i} holds the non-numeric value {bad.strip()!r}; aeaudit needs numeric features"
            )
    return np.asarray([[float(c) for c in r] for r in body], dtype=np.float64)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _is_numeric_row(row: list[str]) -> bool:
    return all(_is_number(c) for c in row)


def validate(arr: Any, name: str) -> np.ndarray:
    arr = np.asarray(arr) if not isinstance(arr, np.ndarray) else arr
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InputError(f"{name}: holds {arr.dtype} values, not numbers")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(
            f"{name}: holds complex numbers ({arr.dtype}); an autoencoder audit needs real-valued "
            "features (split real and imaginary parts into features if the model takes them)"
        )
    if arr.ndim == 0 or arr.shape[0] == 0 or arr.size == 0:
        raise InputError(f"{name}: holds no samples (shape {arr.shape})")
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            flat = int(np.flatnonzero(bad.reshape(arr.shape[0], -1).any(axis=1))[0])
            raise InputError(
                f"{name}: sample {flat} holds NaN or inf ({int(bad.sum())} values in all); clean or drop those rows"
            )
    return arr


def shape_samples(
    arr: np.ndarray, input_shape: tuple[int, ...] | None, name: str = "data"
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Reshape ``arr`` to ``(N, *input_shape)``; with no shape known, keep the file's per-sample shape."""
    per_sample = tuple(arr.shape[1:])
    if not input_shape:
        return arr, per_sample
    want = int(np.prod(input_shape))
    have = int(np.prod(per_sample))
    if have != want:
        raise InputError(
            f"{name}: samples have shape {per_sample} ({have} values) but the model takes "
            f"{tuple(input_shape)} ({want} values); check the file or --input-shape"
        )
    return arr.reshape((arr.shape[0], *input_shape)), tuple(input_shape)


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise InputError(f"--input-shape {text!r}: write it like 1,28,28") from None
    if not shape or any(s <= 0 for s in shape):
        raise InputError(f"--input-shape {text!r}: sizes must be positive integers")
    return shape
