"""Refuse graphs that could do more than compute: a TorchScript or exported graph is code.

A scripted ``forward`` may call ``torch.from_file(path, shared=True)`` and ``copy_`` into it (writing
a file), or custom operators and classes aeaudit cannot vouch for. Before such a model runs, every
method of every submodule is walked (``inlined_graph``, with the blocks of ``prim::If``/``prim::Loop``)
and every operator must be on the allowlist ``safe_ops.txt``; exported programs are walked through
their FX graphs. Without ``--trust-checkpoint`` anything else stops the load, naming the operator and
the method that holds it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from importlib import resources

import torch

from ..errors import UntrustedCheckpointError

log = logging.getLogger(__name__)

TRUST_HINT = "pass --trust-checkpoint (trust_checkpoint=True) only if you trust where the file came from"
CUSTOM_CLASS_PREFIX = "__torch__.torch.classes."


@functools.cache
def safe_ops() -> frozenset[str]:
    """The allowlist, read from ``safe_ops.txt`` (one name a line, ``#`` comments)."""
    text = resources.files(__package__).joinpath("safe_ops.txt").read_text(encoding="utf-8")
    return frozenset(line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip())


def refuse(src: str, what: str, where: str, trust: bool = False) -> None:
    """Stop the load, or with ``trust`` only log what will run."""
    if trust:
        log.warning("%s: %s in %s runs because of --trust-checkpoint", src, what, where)
        return
    raise UntrustedCheckpointError(
        f"{src}: refusing to run {what} in {where}: it is not a side-effect-free tensor operator aeaudit can "
        f"vouch for (the allowlist is aeaudit/model/safe_ops.txt); {TRUST_HINT}"
    )


# --------------------------------------------------------------------------- TorchScript
def _blocks_nodes(block) -> Iterator[torch._C.Node]:
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from _blocks_nodes(inner)


def _custom_class(node: torch._C.Node) -> str | None:
    for value in [*node.inputs(), *node.outputs()]:
        name = str(value.type())
        if CUSTOM_CLASS_PREFIX in name:
            return name
    return None


def script_methods(module: torch.jit.ScriptModule) -> Iterator[tuple[str, torch._C.Graph]]:
    """``(qualified method name, inlined graph)`` for every method of every submodule."""
    for path, sub in module.named_modules():
        cpp = sub._c
        for name in cpp._method_names():
            method = cpp._get_method(name)
            graph = getattr(method, "inlined_graph", None) or method.graph
            yield f"{path + '.' if path else ''}{name}()", graph


def check_script_module(module: torch.jit.ScriptModule, src: str, trust: bool) -> None:
    """Refuse (unless ``trust``) a TorchScript module with an operator or custom class outside the allowlist."""
    allowed = safe_ops()
    for where, graph in script_methods(module):
        for node in _blocks_nodes(graph):
            kind = node.kind()
            custom = _custom_class(node)
            if custom is not None:
                refuse(src, f"the custom class {custom.removeprefix('__torch__.')}", where, trust)
            elif kind not in allowed:
                refuse(src, f"the operator {kind}", where, trust)


# --------------------------------------------------------------------------- torch.export
def fx_target_name(target) -> str:
    """An FX call target as the allowlist spells it: ``aten::linear``, ``_operator.getitem``."""
    schema = getattr(target, "_schema", None)
    if schema is not None:
        return schema.name
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"higher_order::{target.name()}"
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", None) or repr(target)
    return f"{module}.{name}" if module else name


def serialized_target_name(target: str) -> str:
    """A node target as ``torch.export.save`` writes it (``torch.ops.aten.linear.default``) → allowlist name."""
    parts = target.split(".")
    if len(parts) >= 4 and parts[:2] == ["torch", "ops"]:
        return f"{parts[2]}::{parts[3]}"
    return target


def check_fx_graph(graph_module: torch.fx.GraphModule, src: str, trust: bool, where: str = "forward()") -> None:
    """Refuse (unless ``trust``) an exported graph calling anything outside the allowlist; nested graphs too."""
    allowed = safe_ops()
    for node in graph_module.graph.nodes:
        if node.op in ("call_method", "call_module"):
            refuse(src, f"the {node.op.replace('_', ' ')} {node.target}", where, trust)
        elif node.op == "call_function" and fx_target_name(node.target) not in allowed:
            refuse(src, f"the operator {fx_target_name(node.target)}", where, trust)
    for name, sub in graph_module.named_children():
        if isinstance(sub, torch.fx.GraphModule):
            check_fx_graph(sub, src, trust, f"{where} (subgraph {name})")


def check_exported_program(program, src: str, trust: bool) -> None:
    """The program's graph and its constants: tensors only, operators from the allowlist."""
    for name, value in program.constants.items():
        if not isinstance(value, torch.Tensor):
            refuse(
                src, f"the constant {name} (a {type(value).__name__}, not a tensor)", "the program's constants", trust
            )
    check_fx_graph(program.graph_module, src, trust)
