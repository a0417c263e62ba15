"""Settings of individual probes and scorers (``--probe-settings``, ``--scorer-settings``).

A settings dict holds flat keys, handed to every probe (or scorer) that has a field of that name,
and, under a registered name, a dict of that one's own keys, which win:
``{"steps": 400, "pgd-input": {"starts": 128}}``. On the command line the same reads
``steps=400,pgd-input.starts=128``. Probes and scorers are dataclasses, so their fields say which
keys they take and of what type; a key no registered class takes, or a value of the wrong type,
is an error that names it before any work starts.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import fields, is_dataclass
from typing import Any

from .errors import InputError


def parse_settings(text: str, flag: str) -> dict[str, Any]:
    """``"steps=400,pgd-input.starts=128"`` → ``{"steps": 400, "pgd-input": {"starts": 128}}``.
    Values become int, float or bool where they read as one; anything else stays text."""
    out: dict[str, Any] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"{flag} {item!r}: write KEY=VALUE or NAME.KEY=VALUE, e.g. {flag} steps=400,toll.beta=10")
        owner, dot, own_key = key.rpartition(".")
        if dot:
            out.setdefault(owner, {})[own_key.replace("-", "_")] = _value(value.strip())
        else:
            out[key.replace("-", "_")] = _value(value.strip())
    return out


def _value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def field_types(cls: type) -> dict[str, Any]:
    """A dataclass's settings: ``{field name: type}``."""
    if not is_dataclass(cls):
        return {}
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in fields(cls) if f.init}


def accepted_keys(cls: type) -> set[str]:
    return set(field_types(cls))


def constructor_kwargs(
    name: str, cls: type, settings: dict[str, Any] | None, registry: dict[str, type]
) -> dict[str, Any]:
    """The keyword arguments for ``registry[name]``: the flat keys it takes, then its own."""
    settings = settings or {}
    own = settings.get(name)
    merged = {**{k: v for k, v in settings.items() if k not in registry}, **(own if isinstance(own, dict) else {})}
    accepted = accepted_keys(cls)
    return {k: _coerce(v) for k, v in merged.items() if k in accepted and v is not None}


def _coerce(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def check_settings(settings: dict[str, Any], registry: dict[str, type], flag: str, extra: tuple[str, ...] = ()) -> None:
    """Raise :class:`InputError` naming each key no registered class takes (``extra``: keys
    consumed elsewhere, e.g. ``adaptive_probes``) and each value of the wrong type."""
    takes_any = set(extra).union(*(accepted_keys(cls) for cls in registry.values()))
    unknown = []
    for key, value in settings.items():
        if key in registry and isinstance(value, dict):
            unknown += [f"{key}.{k}" for k in value if k not in accepted_keys(registry[key])]
            for k, v in value.items():
                _check_type(f"{key}.{k}", v, field_types(registry[key]).get(k), flag)
        elif key not in takes_any:
            unknown.append(key)
        else:
            for cls in registry.values():
                _check_type(key, value, field_types(cls).get(key), flag)
    if unknown:
        known = ", ".join(sorted(takes_any))
        raise InputError(
            f"{flag}: unknown setting(s) {', '.join(unknown)}; known: {known} "
            f"(prefix NAME. for one of {', '.join(registry)})"
        )


def _check_type(key: str, value: Any, hint: Any, flag: str) -> None:
    if hint is None or value is None:
        return
    expected = _describe(hint)
    if expected and not _matches(value, hint):
        raise InputError(f"{flag}: {key}={value!r}: expected {expected}")


def _options(hint: Any) -> tuple[Any, ...]:
    """The members of ``X | Y`` / ``Optional[X]``, or ``(hint,)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(hint) if a is not type(None))
    return (hint,)


def _matches(value: Any, hint: Any) -> bool:
    for option in _options(hint):
        if option is bool and isinstance(value, bool):
            return True
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return True
        if option is str and isinstance(value, str):
            return True
        if typing.get_origin(option) is tuple and isinstance(value, (list, tuple)):
            inner = typing.get_args(option)[0]
            return all(_matches(v, inner) for v in value)
        if option is Any:
            return True
    return False


def _describe(hint: Any) -> str:
    words = {bool: "true or false", int: "an integer", float: "a finite number", str: "text"}
    names = []
    for option in _options(hint):
        if option in words:
            names.append(words[option])
        elif typing.get_origin(option) is tuple:
            names.append("a list of " + words.get(typing.get_args(option)[0], "values").replace("a ", "", 1) + "s")
        else:
            return ""
    return " or ".join(names)
