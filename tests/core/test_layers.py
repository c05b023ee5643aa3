"""The house: the package's folders are its layers (docs/development/layers.md), checked on its imports.

Read from the source with ``ast`` (every import: at the top, inside a function, under
``TYPE_CHECKING``), nothing is imported. Each rule fails on the first module that
breaks it and names that module and the import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

import parallel_autopilot

PACKAGE = Path(parallel_autopilot.__file__).resolve().parent
NAME = "parallel_autopilot"

#: The layers, bottom first: a module may import its own band and the bands of lower
#: layers, never a higher one (docs/development/layers.md draws the same table). A band is
#: a folder, or the top-level modules of one layer together; two bands of one layer do not
#: import each other, but for the calls below.
LAYERS: list[tuple[str, set[str]]] = [
    ("ground", {"ground"}),
    ("git", {"git"}),
    ("queue", {"issues"}),
    ("inside", {"runtime"}),
    ("configuration", {"config"}),
    ("containers", {"containers"}),
    ("merge", {"merge"}),
    ("api", {"api"}),
    ("edges", {"tasks", "gui", "bench", "program"}),
]
#: the top-level modules and their band
TOP_LEVEL = {"errors": "ground", "ids": "ground", "defaults": "ground", "printable": "ground",
             "platform": "config", "config": "config",
             "fleet": "api", "demo": "api", "remote": "api", "doctor": "api", "distribution": "api",
             "review": "api", "report": "api", "notify": "api", "program": "program", "__main__": "program"}
#: edges that call each other on purpose: the program is the task collection; the tasks serve
#: the GUI and run the bench; the bench measures the GUI
SAME_LAYER_CALLS = {("program", "tasks"), ("tasks", "gui"), ("tasks", "bench"), ("bench", "gui")}
#: what the in-container code may import beside the standard library, and where: pg8000 where a
#: PostgreSQL queue is opened
CONTAINER_BANDS = {"ground", "git", "queue", "inside"}
CONTAINER_THIRD_PARTY = {"pg8000": {"issues.postgres"}}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name under parallel_autopilot ("" is the package)."""
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@lru_cache(maxsize=None)
def imports(module: str) -> tuple[tuple[str, bool, int], ...]:
    """(imported name, only for type checking, line) of every import in ``module``.

    Names inside the package are dotted module names without the package prefix
    (``from ..issues import Claim`` is ``issues``; ``from . import snapshots`` in
    issues/ is ``issues.snapshots``); others are their top-level distribution name.
    """
    path = modules()[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module.split(".") if module else []
    package = here if path.name == "__init__.py" else here[:-1]
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
                   for stmt in node.body for n in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((alias.name, id(node) in typing_only, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                found.append((NAME + ("." + target if target else ""), id(node) in typing_only, node.lineno))
                for alias in node.names:  # `from . import snapshots` imports a module
                    candidate = f"{target}.{alias.name}" if target else alias.name
                    if candidate in modules():
                        found.append((NAME + "." + candidate, id(node) in typing_only, node.lineno))
            else:
                found.append((node.module, id(node) in typing_only, node.lineno))
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    if candidate.startswith(NAME + ".") and candidate[len(NAME) + 1:] in modules():
                        found.append((candidate, id(node) in typing_only, node.lineno))
    result = []
    for name, typing, line in found:
        if name == NAME or name.startswith(NAME + "."):
            inner = name[len(NAME) + 1:]
            while inner and inner not in modules():  # a name imported from a module
                inner = inner.rpartition(".")[0]
            result.append((inner, typing, line))
        else:
            result.append((name.split(".")[0], typing, line))
    return tuple(result)


def band(module: str) -> str:
    head = module.split(".")[0]
    return TOP_LEVEL.get(head, head)


def layer(module: str) -> int:
    for index, (_, bands) in enumerate(LAYERS):
        if band(module) in bands:
            return index
    raise AssertionError(f"{module or NAME} is in no layer of LAYERS: add its band to the table "
                         "(and to docs/development/layers.md)")


def internal(module: str) -> list[tuple[str, bool, int]]:
    return [(name, typing, line) for name, typing, line in imports(module) if name in modules() and name != module]


def test_every_module_is_in_a_layer_and_the_layers_are_the_folders():
    for module in modules():
        if module:
            layer(module)
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == {"issues", "git", "runtime", "containers", "merge", "tasks", "gui", "bench"}
    tops = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    # the top level keeps what every band shares and the API the edges call
    assert tops == set(TOP_LEVEL)


def test_nothing_imports_upward():
    wrong = []
    for module in modules():
        if not module:
            continue
        for name, typing, line in internal(module):
            if typing or not name:  # annotations only: a value handed down, not a dependency
                continue
            mine, theirs = layer(module), layer(name)
            same_band = band(name) == band(module)
            if theirs > mine or (theirs == mine and not same_band
                                 and (band(module), band(name)) not in SAME_LAYER_CALLS):
                wrong.append(f"{module}:{line} imports {name} ({LAYERS[mine][0]} -> {LAYERS[theirs][0]})")
    assert wrong == []


def test_no_import_cycle_among_the_modules():
    # imports that run (at the top or inside a function); TYPE_CHECKING ones never do
    graph = {m: {name for name, typing, _ in internal(m) if name and not typing} for m in modules() if m}
    # a package's __init__ is imported with each of its modules: an edge, as Python walks it
    for module in list(graph):
        parent = module.rpartition(".")[0]
        if parent:
            graph[module].add(parent)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or (node.startswith(nxt + ".")):  # a module and its own package
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, " -> ".join(cycle)


def _commands(module: str) -> list[tuple[str, int]]:
    """The programs a module names as the first word of a command list/tuple literal."""
    path = modules()[module]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
            first = node.elts[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append((first.value, node.lineno))
    return found


def test_only_git_runs_git():
    wrong = [f"{m}:{line}" for m in modules() if band(m) != "git"
             for word, line in _commands(m) if word == "git"]
    assert wrong == []


def test_only_containers_talk_to_docker():
    wrong = [f"{m}:{line} runs {word}" for m in modules() if band(m) != "containers"
             for word, line in _commands(m) if word in ("docker", "docker-compose", "podman")]
    wrong += [f"{m}:{line} imports the Docker SDK" for m in modules() if band(m) != "containers"
              for name, _, line in imports(m) if name == "docker"]
    assert wrong == []


def _container_closure() -> set[str]:
    seen, todo = set(), [m for m in modules() if band(m) == "runtime"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += [name for name, typing, _ in internal(module) if not typing]
        parent = module.rpartition(".")[0]
        if parent:
            todo.append(parent)  # a package's __init__ runs first
    return seen


def test_the_runtime_imports_only_the_standard_library_and_the_bands_below_it():
    closure = _container_closure()
    outside = sorted(m for m in closure if m and LAYERS[layer(m)][0] not in CONTAINER_BANDS)
    assert outside == [], "the runtime reaches host-side modules"
    third = sorted(f"{m}:{line} imports {name}" for m in closure for name, typing, line in imports(m)
                   if not typing and name not in modules() and name not in sys.stdlib_module_names
                   and name != NAME and m not in CONTAINER_THIRD_PARTY.get(name, ()))
    assert third == []


def test_the_runtime_imports_with_the_standard_library_alone():
    # what the agent image has: python3 and this package, no site-packages
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import parallel_autopilot.runtime.agent, "
            "parallel_autopilot.runtime.health; print(sorted(m.split('.')[0] for m in sys.modules "
            "if m.split('.')[0] not in sys.stdlib_module_names and not m.startswith(('parallel_autopilot', '__'))))")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(PACKAGE.parent)], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("rule", [test_nothing_imports_upward, test_no_import_cycle_among_the_modules,
                                  test_only_git_runs_git, test_only_containers_talk_to_docker])
def test_a_rule_fails_on_a_module_that_breaks_it(rule, monkeypatch, tmp_path):
    # the rules are not vacuous: two modules of the ground that import each other and the
    # fleet, run git and run docker break all four
    bad, other = tmp_path / "bad.py", tmp_path / "other.py"
    bad.write_text("from .fleet import Fleet\nfrom . import errors_other\nGIT = ['git', 'status']\n"
                   "DOCKER = ('docker', 'ps')\n")
    other.write_text("from .errors_bad import GIT\n")
    fake = {**modules(), "errors_bad": bad, "errors_other": other}
    monkeypatch.setattr(sys.modules[__name__], "modules", lambda: fake)
    monkeypatch.setitem(TOP_LEVEL, "errors_bad", "ground")
    monkeypatch.setitem(TOP_LEVEL, "errors_other", "ground")
    imports.cache_clear()
    try:
        with pytest.raises(AssertionError):
            rule()
    finally:
        imports.cache_clear()
