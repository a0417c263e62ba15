"""Settings from a file: ``[tool.aeaudit]`` in ``pyproject.toml``, an ``aeaudit.toml``, or ``--config FILE``.

Keys are the command's option names (``fail-on`` or ``fail_on``), plus ``model`` for the
checkpoint argument. The file's values become the command's defaults (click's
``default_map``, as black does), so a flag given on the command line always wins. Unknown
keys are an error that names them; a value of the wrong type is an error that names the key.
Relative paths in a file are relative to the file's folder.

Settings that run code — ``trust-checkpoint = true`` (unpickling) and an ``arch`` that imports a
file or module — are taken only from a file named with ``--config``: a file found in the current
folder may have come with the checkout being scanned, and it must not vouch for itself.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from .errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SEARCHED = ("aeaudit.toml", "pyproject.toml")  # in the current directory, in this order
NOT_FROM_FILE = {"config_file", "help"}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise InputError(f"--config {path}: cannot read it ({exc.strerror or exc}); check the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc}); fix the file or pass another with --config") from None


def _table(path: Path, doc: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The aeaudit settings of a parsed file and where they sit, for messages."""
    if path.name == "pyproject.toml" or "tool" in doc:
        table = (doc.get("tool") or {}).get("aeaudit")
        if table is None:
            raise InputError(f"{path}: no [tool.aeaudit] table; add one or pass an aeaudit.toml with --config")
        if not isinstance(table, dict):
            raise InputError(f"{path}: [tool.aeaudit] must be a table of settings")
        return table, f"{path} [tool.aeaudit]"
    return doc, str(path)


def find_config(
    explicit: str | Path | None = None, cwd: str | Path | None = None
) -> tuple[Path | None, dict[str, Any], str]:
    """The settings file to use: ``explicit`` (``--config``), else ``aeaudit.toml`` or a
    ``pyproject.toml`` with a ``[tool.aeaudit]`` table in ``cwd``. Returns ``(path or None,
    settings, where)`` with keys as written in the file."""
    if explicit is not None:
        path = Path(explicit)
        table, where = _table(path, _read_toml(path))
        return path, table, where
    cwd = Path.cwd() if cwd is None else Path(cwd)
    for name in SEARCHED:
        path = cwd / name
        if not path.is_file():
            continue
        doc = _read_toml(path)
        if name == "pyproject.toml" and "aeaudit" not in (doc.get("tool") or {}):
            continue  # a project's pyproject without aeaudit settings is not ours to judge
        table, where = _table(path, doc)
        return path, table, where
    return None, {}, ""


def resolve_keys(settings: dict[str, Any], known: list[str], where: str) -> dict[str, Any]:
    """Map file keys (``fail-on`` or ``fail_on``) onto parameter names; unknown keys are an error."""
    out, unknown = {}, []
    for key, value in settings.items():
        name = key.replace("-", "_")
        if name in known and name not in NOT_FROM_FILE:
            out[name] = value
        else:
            unknown.append(key)
    if unknown:
        allowed = ", ".join(k.replace("_", "-") for k in known if k not in NOT_FROM_FILE)
        raise InputError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known keys: {allowed}")
    return out


EXPECTED = {
    int: "an integer",
    float: "a number",
    str: "a string (or a list, joined by commas)",
    bool: "true or false",
    Path: "a path (string)",
}


def convert(value: Any, kind: type, name: str, where: str, base: Path) -> Any:
    """A TOML value as the command's parameter of type ``kind`` (lists → comma-separated text, as
    on the command line; relative paths → relative to the settings file's folder ``base``)."""
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, (str, int, float, list)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        Path: isinstance(value, str),
    }.get(kind, False)
    if not ok:
        raise InputError(f"{where}: {name.replace('_', '-')} = {value!r}: expected {EXPECTED.get(kind, kind.__name__)}")
    if kind is str and isinstance(value, list):
        return ",".join(str(v) for v in value)
    if kind is Path:
        path = Path(value)
        return path if path.is_absolute() else base / path
    return kind(value)


def _base_type(hint: Any) -> type:
    """``Optional[X]`` → ``X``."""
    args = [a for a in get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 and get_origin(hint) is not None else hint


def refuse_found_code_settings(values: dict[str, Any], where: str, path: Path) -> None:
    """Trust comes from the person running the scan: not from a settings file found beside the files scanned."""
    runs_code = []
    if values.get("trust_checkpoint") is True:
        runs_code.append("trust-checkpoint = true (unpickling runs code from the checkpoint)")
    arch = values.get("arch")
    if isinstance(arch, str) and not arch.strip().startswith("mlp:"):
        runs_code.append(f"arch = {arch!r} (imports and runs that code)")
    if runs_code:
        raise InputError(
            f"{where}: {'; '.join(runs_code)} is accepted only from a settings file named with --config "
            f"or from the command line, not from one found in the current folder; "
            f"pass --config {path} if you vouch for it"
        )


def apply_config_file(ctx: Any, explicit: str | Path | None) -> Path | None:
    """Load the settings file for the typer/click context ``ctx`` and make its values the
    command's defaults. Call it from an eager option's callback, before the other parameters
    are resolved. Returns the file used, if any."""
    path, settings, where = find_config(explicit)
    if path is None:
        return None
    names = [p.name for p in ctx.command.params]
    values = resolve_keys(settings, names, where)
    if explicit is None:
        refuse_found_code_settings(values, where, path)
    hints = get_type_hints(inspect.unwrap(ctx.command.callback))
    converted = {
        name: convert(value, _base_type(hints.get(name, str)), name, where, path.parent)
        for name, value in values.items()
    }
    ctx.default_map = {**(ctx.default_map or {}), **converted}
    return path
