"""Settings of individual probes and scorers (``--probe-settings``, ``--scorer-settings``).

A settings dict holds flat keys, handed to every probe (or scorer) whose constructor takes
them, and, under a registered name, a dict of that one's own keys, which win:
``{"steps": 400, "pgd-input": {"starts": 128}}``. On the command line the same reads
``steps=400,pgd-input.starts=128``. A key that no registered class takes is an error that
names it, so a typo never passes silently.
"""
from __future__ import annotations

import inspect
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


def accepted_keys(cls: type) -> set[str]:
    return {name for name in inspect.signature(cls.__init__).parameters if name != "self"}


def constructor_kwargs(name: str, cls: type, settings: dict[str, Any] | None, registry: dict[str, type]) -> dict[str, Any]:
    """The keyword arguments for ``registry[name]``: the flat keys it takes, then its own."""
    settings = settings or {}
    own = settings.get(name)
    merged = {**{k: v for k, v in settings.items() if k not in registry}, **(own if isinstance(own, dict) else {})}
    accepted = accepted_keys(cls)
    return {k: v for k, v in merged.items() if k in accepted and v is not None}


def check_settings(settings: dict[str, Any], registry: dict[str, type], flag: str, extra: tuple[str, ...] = ()) -> None:
    """Raise :class:`InputError` naming each key no registered class takes (``extra``: keys
    consumed elsewhere, e.g. ``adaptive_probes``)."""
    takes_any = set(extra).union(*(accepted_keys(cls) for cls in registry.values()))
    unknown = []
    for key, value in settings.items():
        if key in registry and isinstance(value, dict):
            unknown += [f"{key}.{k}" for k in value if k not in accepted_keys(registry[key])]
        elif key not in takes_any:
            unknown.append(key)
    if unknown:
        known = ", ".join(sorted(takes_any))
        raise InputError(f"{flag}: unknown setting(s) {', '.join(unknown)}; known: {known} "
                         f"(prefix NAME. for one of {', '.join(registry)})")
