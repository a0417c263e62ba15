"""Checkpoints crafted the way an attacker would: each creates a marker file when torch loads or runs it.

Every payload writes (or creates) ``marker``; a test proves nothing ran by asserting the marker is absent.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from helpers import trained_toy
from torch import nn

X4 = torch.zeros(4, 2)


class CreatesFile:
    """Unpickling this object creates the file at ``target``."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def _pickled(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def rewrite_zip(
    src: Path, dst: Path, edit: Callable[[str, bytes], bytes | None], extra: dict[str, bytes] | None = None
):
    """Copy the zip ``src`` to ``dst``, passing each member through ``edit`` (``None`` drops it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)
        for name, data in (extra or {}).items():
            zout.writestr(name, data)
    return dst


class WithConstant(nn.Module):
    """An autoencoder whose exported program has a lifted tensor constant."""

    def __init__(self):
        super().__init__()
        self.net = trained_toy()

    def forward(self, x):
        return self.net(x) + torch.tensor([0.0, 0.0])


def export_pt2(path: Path, module: nn.Module | None = None, dynamic: bool = False) -> Path:
    module = (module or trained_toy()).eval()
    shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic else None
    torch.export.save(torch.export.export(module, (X4,), dynamic_shapes=shapes), str(path))
    return path


def _edit_json(suffix: str, change: Callable[[dict], None]):
    def edit(name: str, data: bytes) -> bytes:
        if name.endswith(suffix):
            doc = json.loads(data)
            change(doc)
            return json.dumps(doc).encode()
        return data

    return edit


def pt2_pickled_weight(folder: Path, marker: Path) -> Path:
    """A ``use_pickle`` weight: torch.export.load unpickles it with weights_only=False."""
    clean = export_pt2(folder / "clean_w.pt2")
    config = json.loads(zipfile.ZipFile(clean).read("clean_w/data/weights/model_weights_config.json"))
    fqn, meta = next(iter(config["config"].items()))

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("model_weights_config.json"):
            config["config"][fqn]["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith(f"data/weights/{meta['path_name']}"):
            return _pickled(CreatesFile(marker))
        return data

    return rewrite_zip(clean, folder / "pickled_weight.pt2", edit)


def pt2_pickled_constant(folder: Path, marker: Path) -> Path:
    """A ``use_pickle`` tensor constant."""
    clean = export_pt2(folder / "clean_c.pt2", WithConstant())

    def change(doc):
        for meta in doc["config"].values():
            meta["use_pickle"] = True

    edit_config = _edit_json("model_constants_config.json", change)

    def edit(name: str, data: bytes) -> bytes:
        if "/data/constants/tensor_" in name:
            return _pickled(CreatesFile(marker))
        return edit_config(name, data)

    return rewrite_zip(clean, folder / "pickled_constant.pt2", edit)


def pt2_opaque_constant(folder: Path, marker: Path) -> Path:
    """A constant stored as an "opaque object", which torch reads with ``pickle.loads``."""
    import pickle

    clean = export_pt2(folder / "clean_o.pt2", WithConstant())

    def change(doc):
        for meta in doc["config"].values():
            meta["path_name"] = "opaque_obj_0"
            meta["use_pickle"] = True  # torch then skips the raw-tensor read and reaches pickle.loads

    edit_config = _edit_json("model_constants_config.json", change)
    stem = "clean_o"
    return rewrite_zip(
        clean,
        folder / "opaque_constant.pt2",
        edit_config,
        extra={f"{stem}/data/constants/opaque_obj_0": pickle.dumps(CreatesFile(marker))},
    )


def pt2_sample_inputs(folder: Path, marker: Path) -> Path:
    """Sample inputs the safe loader refuses: torch falls back to weights_only=False. The payload's
    result stands in for the inputs, so a scan would otherwise run to the end."""
    clean = export_pt2(folder / "clean_s.pt2")

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("data/sample_inputs/model.pt"):
            return _pickled(((X4, CreatesFile(marker)), {}))
        return data

    return rewrite_zip(clean, folder / "sample_inputs.pt2", edit)


def pt2_shape_expression(folder: Path, marker: Path) -> Path:
    """A dynamic-shape expression that ``sympify`` evaluates as Python."""
    clean = export_pt2(folder / "clean_e.pt2", dynamic=True)
    payload = f"__import__('builtins').open({str(marker)!r}, 'w').close() is None"

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("models/model.json"):
            return data.replace(b"positive=True", f"positive={payload}".encode())
        return data

    return rewrite_zip(clean, folder / "shape_expression.pt2", edit)


def pt2_guards_code(folder: Path, marker: Path) -> Path:
    """An input guard that torch ``exec``s when it builds the module."""
    clean = export_pt2(folder / "clean_g.pt2")

    def change(doc):
        doc["guards_code"] = [f"__import__('builtins').open({str(marker)!r}, 'w').close() is None"]

    return rewrite_zip(clean, folder / "guards_code.pt2", _edit_json("models/model.json", change))


def pt2_aotinductor(folder: Path, marker: Path) -> Path:
    """A member under data/aotinductor/: torch would dlopen the compiled model found there."""
    clean = export_pt2(folder / "clean_a.pt2")
    return rewrite_zip(
        clean,
        folder / "aoti.pt2",
        lambda n, d: d,
        extra={"clean_a/data/aotinductor/model/model.so": b"\x7fELF not really"},
    )


def pt2_bad_operator(folder: Path, marker: Path) -> Path:
    """A graph node whose target is ``torch.save`` instead of an ATen operator."""
    clean = export_pt2(folder / "clean_t.pt2")

    def change(doc):
        for node in doc["graph_module"]["graph"]["nodes"]:
            if node["target"].endswith("relu.default"):
                node["target"] = "torch.save"
                return

    return rewrite_zip(clean, folder / "bad_operator.pt2", _edit_json("models/model.json", change))


def legacy_export_zip(folder: Path, marker: Path) -> Path:
    """A zip named ``model.pt`` in torch.export's pre-2.8 layout, its state dict pickled."""
    path = folder / "legacy.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("version", "8.0")
        zf.writestr("serialized_exported_program.json", b"{}")
        zf.writestr("serialized_state_dict.pt", _pickled({"w": CreatesFile(marker)}))
        zf.writestr("serialized_constants.pt", _pickled({}))
        zf.writestr("serialized_example_inputs.pt", _pickled(((X4,), {})))
    return path


class FileWritingForward(nn.Module):
    """A scripted forward that creates and overwrites a file: ``from_file(shared=True)`` + ``copy_``."""

    def __init__(self, path: str):
        super().__init__()
        self.net = trained_toy()
        self.path = path

    def forward(self, x):
        buf = torch.from_file(self.path, shared=True, size=4, dtype=torch.uint8)
        buf.copy_(torch.full([4], 65, dtype=torch.uint8))
        return self.net(x) + buf[0].float() * 0


class FileWritingSetstate(nn.Module):
    """TorchScript ``__setstate__``, which ``torch.jit.load`` runs while loading, writing a file."""

    def __init__(self, path: str):
        super().__init__()
        self.w = torch.eye(2)
        self.path = path

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
        return (self.path, self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
        self.path = state[0]
        self.training = state[2]
        buf = torch.from_file(self.path, shared=True, size=4, dtype=torch.uint8)
        buf.copy_(torch.full([4], 65, dtype=torch.uint8))
        self.w = state[1] + buf[0].float() * 0

    def forward(self, x):
        return x @ self.w


def script_forward_writes(folder: Path, marker: Path) -> Path:
    path = folder / "forward_writes.pt"
    torch.jit.save(torch.jit.script(FileWritingForward(str(marker))), str(path))
    return path


def script_setstate_writes(folder: Path, marker: Path) -> Path:
    path = folder / "setstate_writes.pt"
    torch.jit.save(torch.jit.script(FileWritingSetstate(str(marker))), str(path))
    marker.unlink(missing_ok=True)
    return path


def script_pickled_constants(folder: Path, marker: Path) -> Path:
    """TorchScript whose constants.pkl holds a pickled callable instead of tensors."""
    import pickle

    clean = folder / "clean_ts.pt"
    torch.jit.save(torch.jit.script(trained_toy()), str(clean))
    return rewrite_zip(
        clean,
        folder / "pickled_constants.pt",
        lambda n, d: pickle.dumps(CreatesFile(marker), protocol=2) if n.endswith("constants.pkl") else d,
    )


def script_duplicate_member(folder: Path, marker: Path) -> Path:
    """Two members with one name: Python's zipfile reads the last, torch's reader may read the first."""
    clean = folder / "clean_dup.pt"
    torch.jit.save(torch.jit.script(trained_toy()), str(clean))
    code = next(n for n in zipfile.ZipFile(clean).namelist() if "/code/" in n and n.endswith(".py"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate it is asked to write
        return rewrite_zip(clean, folder / "duplicate.pt", lambda n, d: d, extra={code: b"# shadow\n"})


def script_reader_mismatch(folder: Path, marker: Path) -> Path:
    """A member name without zip's UTF-8 flag: Python's zipfile decodes it as cp437, torch's reader as
    UTF-8, so the two see different names (a check made with one reader would miss what the other loads)."""
    clean = folder / "clean_enc.pt"
    torch.jit.save(torch.jit.script(trained_toy()), str(clean))
    root = zipfile.ZipFile(clean).namelist()[0].split("/")[0]
    raw = rewrite_zip(
        clean, folder / "mismatch.pt", lambda n, d: d, extra={f"{root}/code/\u00e9.py": b"#"}
    ).read_bytes()
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # the last local and central header
        at = raw.rfind(signature) + flag_offset
        flags = struct.unpack("<H", raw[at : at + 2])[0] & ~0x800
        raw = raw[:at] + struct.pack("<H", flags) + raw[at + 2 :]
    (folder / "mismatch.pt").write_bytes(raw)
    return folder / "mismatch.pt"


def traversal_member(folder: Path, marker: Path) -> Path:
    clean = folder / "clean_trav.pt"
    torch.save(trained_toy().state_dict(), clean)
    return rewrite_zip(clean, folder / "traversal.pt", lambda n, d: d, extra={"../../evil.py": b"print(1)"})


PT2_ATTACKS = {
    "pickled-weight": pt2_pickled_weight,
    "pickled-constant": pt2_pickled_constant,
    "opaque-constant": pt2_opaque_constant,
    "sample-inputs": pt2_sample_inputs,
    "shape-expression": pt2_shape_expression,
    "guards-code": pt2_guards_code,
}
REFUSED_ATTACKS = {
    **PT2_ATTACKS,
    "aotinductor": pt2_aotinductor,
    "bad-operator": pt2_bad_operator,
    "legacy-export": legacy_export_zip,
    "forward-writes": script_forward_writes,
    "setstate-writes": script_setstate_writes,
    "duplicate-member": script_duplicate_member,
    "reader-mismatch": script_reader_mismatch,
    "traversal-member": traversal_member,
}
