"""Inspect checkpoint archives before torch reads them: what a file is, by its content, and whether
loading it could run code.

``torch.export.load`` (torch 2.13) unpickles with ``weights_only=False`` every weight and constant
marked ``use_pickle``, falls back to ``weights_only=False`` for sample inputs the safe loader
refuses, ``pickle.loads`` "opaque" constants, loads AOTInductor shared libraries, ``sympify``s
(``eval``) the shape expressions of ``models/*.json`` and ``exec``s its ``guards_code``.
``torch.jit.load`` runs a class's TorchScript ``__setstate__`` and builds custom C++ classes. The
checks below refuse each of these unless the caller trusts the file, and they read the members
with torch's own zip reader from the same bytes that are then handed to torch, so what is checked
is what torch loads.
"""

from __future__ import annotations

import ast
import io
import json
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass

import torch

from ..errors import InputError, UntrustedCheckpointError, one_line
from .graph_guard import TRUST_HINT, safe_ops, serialized_target_name

# Pickle protocol ≥ 2 opens with 0x80; joblib may compress its pickle with zlib, gzip, bz2, xz or lzma.
PICKLE_MAGICS = (b"\x80", b"\x78", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"]\x00\x00")
# Python's tokenizer ends a line at \r as well as \n: such characters in strings that torch turns into
# generated Python source could start a new statement.
LINE_BREAKERS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
SETSTATE = re.compile(rb"def\s+__setstate__\b")
CUSTOM_CLASS = re.compile(rb"torch\.classes\.")
# Functions a shape expression of an exported program may call (sympy and torch.utils._sympy.functions).
SYMPY_CALLS = frozenset(
    "Symbol Integer Float Rational Add Mul Pow Max Min Mod Abs floor ceiling sqrt Eq Ne Lt Le Gt Ge And Or Not "
    "FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift PowByNatural "
    "FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt "
    "RoundDecimal ToFloat Identity OpaqueUnaryFn_sqrt BitwiseFn_bitwise_and BitwiseFn_bitwise_or".split()
)
SYMPY_NAMES = SYMPY_CALLS | {"oo", "zoo", "nan", "true", "false", "True", "False", "pi", "E"}
SYMBOL_NAME = re.compile(r"^[a-z]{1,4}\d+$")
GUARD_METHODS = frozenset({"size", "stride", "storage_offset", "dim"})
PURE_AST = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.Constant,
    ast.Load,
    ast.operator,
    ast.unaryop,
    ast.boolop,
    ast.cmpop,
)


def looks_like_pickle(data: bytes) -> bool:
    return data[:6].startswith(PICKLE_MAGICS)


def is_safetensors(data: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON object of that length."""
    if len(data) < 10:
        return False
    (size,) = struct.unpack("<Q", data[:8])
    return 2 <= size <= len(data) - 8 and data[8:9] == b"{"


def is_onnx(data: bytes) -> bool:
    """ONNX ModelProto: field 1 (``ir_version``, a small varint) comes first in every exporter's output."""
    return len(data) > 16 and data[0] == 0x08 and 1 <= data[1] <= 30


@dataclass(frozen=True)
class ZipView:
    """A torch zip archive as torch's own reader sees it: record names without the root folder."""

    reader: torch._C.PyTorchFileReader | None  # None: not a torch archive (e.g. torch.export's pre-2.8 layout)
    names: frozenset[str]
    src: str
    data: bytes

    def read(self, name: str) -> bytes:
        if self.reader is None:
            return zipfile.ZipFile(io.BytesIO(self.data)).read(name)
        return self.reader.get_record(name)

    def text(self, name: str) -> str:
        return self.read(name).decode("utf-8", errors="replace")


def open_zip(data: bytes, src: str) -> ZipView | None:
    """``None`` when ``data`` is not a zip; an error for zips whose members are ambiguous (duplicate names,
    names escaping their folder, members that torch's reader and Python's do not agree on)."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return None
    try:
        infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(f"{src}: a damaged zip archive ({one_line(exc)})") from None
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        if name in seen:
            raise InputError(
                f"{src}: the archive holds two members named {name!r}; which one a reader takes is "
                "ambiguous, so it is refused; re-save the model"
            )
        seen.add(name)
        parts = name.split("/")
        if name.startswith("/") or "\\" in name or "\x00" in name or ".." in parts:
            raise InputError(f"{src}: the archive member {name!r} points outside the archive; re-save the model")
    files = [info.filename for info in infos if not info.filename.endswith("/")]
    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        names = frozenset(reader.get_all_records())
    except Exception:  # members outside one root folder: torch's reader refuses the zip, Python's lists it
        return ZipView(None, frozenset(files), src, data)
    listed = {name.split("/", 1)[-1] for name in files}
    if listed != names:
        raise InputError(
            f"{src}: torch's zip reader and Python's list different members in this archive "
            f"({', '.join(sorted(listed ^ names)[:3])}); it is refused as ambiguous; re-save the model"
        )
    return ZipView(reader, names, src, data)


def zip_kind(view: ZipView) -> str:
    """``torch.export`` | ``torch.export (legacy)`` | ``torchscript`` | ``torch.save``, by the members."""
    if "archive_format" in view.names and view.read("archive_format").strip() == b"pt2":
        return "torch.export"
    if any("serialized_exported_program" in n for n in view.names):
        return "torch.export (legacy)"
    if "constants.pkl" in view.names or any(n.startswith("code/") for n in view.names):
        return "torchscript"
    return "torch.save"


def _untrusted(src: str, why: str) -> UntrustedCheckpointError:
    return UntrustedCheckpointError(f"{src}: refusing to load: {why}; {TRUST_HINT}")


# --------------------------------------------------------------------------- expressions torch evaluates
def _safe_expression(text: str, allow_call, allow_name, allow_subscript: bool) -> bool:
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, PURE_AST):
            continue
        if isinstance(node, ast.Call):
            if not allow_call(node):
                return False
        elif isinstance(node, ast.keyword):
            if not isinstance(node.value, ast.Constant) or node.arg is None:
                return False
        elif isinstance(node, ast.Name):
            if not allow_name(node.id):
                return False
        elif isinstance(node, ast.Attribute):
            if node.attr not in GUARD_METHODS or not allow_subscript:
                return False
        elif isinstance(node, ast.Subscript):
            if not allow_subscript:
                return False
        else:
            return False
    return True


def safe_sympy_expression(text: str) -> bool:
    """A shape expression built only from symbols, numbers, arithmetic and sympy's shape functions
    (``sympify`` evaluates the text as Python)."""
    return _safe_expression(
        text,
        allow_call=lambda c: isinstance(c.func, ast.Name) and c.func.id in SYMPY_CALLS,
        allow_name=lambda n: n in SYMPY_NAMES or bool(SYMBOL_NAME.match(n)),
        allow_subscript=False,
    )


def safe_guard(text: str) -> bool:
    """An input guard such as ``L['x'].size()[0] >= 2`` (torch ``exec``s these when it builds the module)."""
    return _safe_expression(
        text,
        allow_call=lambda c: (
            isinstance(c.func, ast.Attribute) and c.func.attr in GUARD_METHODS and not c.args and not c.keywords
        ),
        allow_name=lambda n: n == "L",
        allow_subscript=True,
    )


# --------------------------------------------------------------------------- torch.export (.pt2)
PT2_FIXED = {"archive_format", "archive_version", "byteorder"}
PT2_PREFIXES = (".data/", "models/", "data/weights/", "data/constants/", "data/sample_inputs/", "extra/")
NATIVE_CODE_PREFIXES = ("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/")


def _json(view: ZipView, name: str) -> object:
    try:
        return json.loads(view.read(name))
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"{view.src}: unreadable {name} in the .pt2 archive ({one_line(exc)})") from None


def _walk_json(obj: object):
    """Every dict of a parsed JSON document, and every string."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            yield item


def _check_payloads(view: ZipView, config_name: str, what: str) -> None:
    if config_name not in view.names:
        raise InputError(f"{view.src}: the .pt2 archive lacks {config_name}; re-save it with torch.export.save")
    config = _json(view, config_name)
    entries = config.get("config", {}) if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise InputError(f"{view.src}: {config_name} is not a torch.export payload config")
    for fqn, meta in entries.items():
        meta = meta if isinstance(meta, dict) else {}
        path = str(meta.get("path_name", ""))
        if what == "constant" and not path.startswith("tensor_"):
            raise _untrusted(view.src, f"its constant {fqn!r} is a pickled or custom object ({path}), not a tensor")
        if meta.get("use_pickle"):
            raise _untrusted(
                view.src,
                f"its {what} {fqn!r} is pickled (use_pickle), and torch unpickles it "
                "with weights_only=False, which can run code",
            )


def _check_sample_inputs(view: ZipView, name: str) -> None:
    blob = view.read(name)
    if not blob:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception:
        value = None
    if not isinstance(value, (tuple, dict)):
        raise _untrusted(
            view.src,
            f"its sample inputs ({name}) are not plain tensors, and torch would load them "
            "with weights_only=False, which can run code",
        )


def _check_program_json(view: ZipView, name: str) -> None:
    allowed = safe_ops()
    for item in _walk_json(_json(view, name)):
        if isinstance(item, str):
            if LINE_BREAKERS.search(item):
                raise _untrusted(view.src, f"{name} holds text with line-break characters torch could turn into code")
            continue
        target = item.get("target")
        if isinstance(target, str) and "inputs" in item and serialized_target_name(target) not in allowed:
            raise _untrusted(
                view.src,
                f"its graph ({name}) calls {serialized_target_name(target)}, which is not a "
                "side-effect-free tensor operator aeaudit can vouch for (aeaudit/model/safe_ops.txt)",
            )
        expr = item.get("expr_str")
        if isinstance(expr, str) and not safe_sympy_expression(expr):
            raise _untrusted(
                view.src,
                f"its shape expression {expr[:80]!r} ({name}) is not plain arithmetic, "
                "and torch evaluates it as Python",
            )
        for guard in item.get("guards_code") or []:
            if not isinstance(guard, str) or not safe_guard(guard):
                raise _untrusted(
                    view.src,
                    f"its input guard {str(guard)[:80]!r} ({name}) is not a plain shape "
                    "check, and torch executes it as Python",
                )


def check_pt2(view: ZipView, trust: bool) -> None:
    """Refuse, unless ``trust``, a ``.pt2`` whose loading by ``torch.export.load`` could run code."""
    if trust:
        return
    for name in sorted(view.names):
        if name.startswith(NATIVE_CODE_PREFIXES):
            raise _untrusted(view.src, f"it holds compiled code ({name}), which torch would load and run")
        if name not in PT2_FIXED and not name.startswith(PT2_PREFIXES):
            raise InputError(
                f"{view.src}: unexpected member {name!r} in a .pt2 archive; re-save it with torch.export.save"
            )
    models = sorted(
        n[len("models/") : -len(".json")] for n in view.names if n.startswith("models/") and n.endswith(".json")
    )
    if not models:
        raise InputError(f"{view.src}: the .pt2 archive holds no exported program (models/*.json)")
    for model in models:
        for legacy in (f"data/weights/{model}.pt", f"data/constants/{model}.pt"):
            if legacy in view.names:
                raise _untrusted(
                    view.src,
                    f"it stores {legacy} in torch's old pickled layout; re-save it with "
                    "torch.export.save of torch >= 2.8",
                )
        _check_payloads(view, f"data/weights/{model}_weights_config.json", "weight")
        _check_payloads(view, f"data/constants/{model}_constants_config.json", "constant")
        _check_sample_inputs(view, f"data/sample_inputs/{model}.pt")
        _check_program_json(view, f"models/{model}.json")


# --------------------------------------------------------------------------- TorchScript
def check_torchscript(view: ZipView, trust: bool) -> None:
    """Refuse, unless ``trust``, TorchScript that runs code while it loads: a ``__setstate__`` (run by
    ``torch.jit.load`` for every object of its class) or a custom C++ class (built by its own setstate)."""
    if trust:
        return
    for name in sorted(view.names):
        if name.startswith(("data/", ".data/", "extra/")):  # tensor storages and metadata; never compiled
            continue
        blob = view.read(name)
        if SETSTATE.search(blob):
            raise _untrusted(
                view.src, f"its TorchScript defines __setstate__ ({name}), which torch.jit.load runs while loading"
            )
        if CUSTOM_CLASS.search(blob):
            raise _untrusted(
                view.src,
                f"its TorchScript uses a custom C++ class (torch.classes, in {name}) that aeaudit cannot vouch for",
            )
