"""The package imports downhill: no module imports one that (directly or not) imports it back, and
the report writers never reach code that runs a model. Read from the source, every import counted
(also the ones inside functions, which close a cycle at call time)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "aeaudit"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import plots` imports a submodule
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {t for t in out if t in known and t != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycle():
    graph = _graph()
    assert len(graph) > 30  # the walk found the package
    cycles = sorted(name for name in graph if name in _reaches(graph, name))
    assert cycles == [], f"modules on an import cycle: {cycles}"


def test_report_writers_do_not_reach_the_audit():
    graph = _graph()
    for name in (
        "aeaudit.report.html",
        "aeaudit.report.junit",
        "aeaudit.report.markdown",
        "aeaudit.report.terminal",
        "aeaudit.report.json_report",
    ):
        reached = _reaches(graph, name)
        assert not reached & {"aeaudit.audit", "aeaudit.runner", "aeaudit.probes", "aeaudit.model"}, (name, reached)
