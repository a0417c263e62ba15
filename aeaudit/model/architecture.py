"""Architectures for state_dicts: the built-in ``mlp:`` spec or the user's own factory (``--arch``)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from torch import nn

from ..errors import InputError, one_line
from ..zoo import MLPAutoencoder


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
            raise InputError(f"--arch {spec}: running {target} failed ({one_line(exc)})") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise InputError(f"--arch {spec}: cannot import {target} ({exc}); is its folder on PYTHONPATH?") from None
        except Exception as exc:
            raise InputError(f"--arch {spec}: importing {target} failed ({one_line(exc)})") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise InputError(f"--arch {spec}: {target} has no callable {factory_name!r}")
    try:
        model = factory()
    except Exception as exc:
        raise InputError(
            f"--arch {spec}: {factory_name}() failed ({one_line(exc)}); it must build the model with no arguments"
        ) from None
    if not isinstance(model, nn.Module):
        raise InputError(f"--arch {spec}: {factory_name}() returned {type(model).__name__}, not a torch.nn.Module")
    return model
