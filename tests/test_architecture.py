"""The layout holds: imports run one way between layers, no circles, small modules and functions.

docs/ARCHITECTURE.md draws the layers; this test is what keeps the picture true.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parent.parent / "agent"

# Lowest first. A module may import from its own layer and from the layers below it.
LAYERS = (
    ("errors",),
    ("jobs", "config"),
    ("credentials",),
    ("tls",),
    ("http",),
    ("engine",),
    ("queues",),
    ("worker",),
    ("service",),
    ("commands",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50
# Tables, not logic: a function that only lists data may be longer.
TABLES = {("commands/demo/demo.py", "_cases")}
# Debt being paid down: each entry is a module or function still over its limit. The list only
# shrinks; a module or function that grows past a limit fails at once.
OVERSIZE: set[str | tuple[str, str]] = set()  # paid off; new debt needs a reason here


def modules() -> Iterator[Path]:
    yield from sorted(AGENT.rglob("*.py"))


def layer_of(path: Path) -> str:
    return path.relative_to(AGENT).parts[0].removesuffix(".py")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(AGENT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Modules of the agent this one imports (at any depth: lazy imports count too)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("agent."):
                # ``from agent.pkg import module`` imports that module, not only the package
                subs = {f"{node.module}.{a.name}" for a in node.names}
                found |= {
                    s
                    for s in subs
                    if (AGENT.parent / s.replace(".", "/")).exists()
                    or (AGENT.parent / (s.replace(".", "/") + ".py")).exists()
                }
                if not subs <= found:
                    found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("agent.")}
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; the layout uses absolute imports")
    return found


def test_every_module_belongs_to_a_layer() -> None:
    unknown = {layer_of(p) for p in modules()} - set(RANK) - {"__init__", "__main__"}
    assert not unknown, f"modules outside the layers: {sorted(unknown)}; add them to LAYERS"


def test_imports_run_downwards() -> None:
    upward = []
    for path in modules():
        here = layer_of(path)
        if here not in RANK:
            continue
        for target in imports_of(path):
            there = target.split(".")[1]
            if RANK.get(there, -1) > RANK[here]:
                upward.append(f"{module_name(path)} imports {target}")
    assert not upward, "imports from a higher layer:\n" + "\n".join(sorted(upward))


def test_no_import_circles() -> None:
    graph = {module_name(p): imports_of(p) for p in modules()}
    known = set(graph)
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            nxt = nxt if nxt in known else nxt.rsplit(".", 1)[0]
            if nxt not in known or nxt == node:
                continue
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("path", list(modules()), ids=lambda p: str(p.relative_to(AGENT)))
def test_module_and_functions_are_small(path: Path) -> None:
    text = path.read_text()
    rel = str(path.relative_to(AGENT))
    lines = text.count("\n")
    assert lines <= MAX_MODULE_LINES or rel in OVERSIZE, f"{rel}: over {MAX_MODULE_LINES} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
        and (rel, node.name) not in TABLES | OVERSIZE
    ]
    assert not long, f"{rel}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def test_the_oversize_list_holds_only_what_is_still_over() -> None:
    """Once a module or function is split, it leaves OVERSIZE (so it cannot grow back)."""
    stale = []
    for entry in OVERSIZE:
        rel, name = entry if isinstance(entry, tuple) else (entry, None)
        text = (AGENT / rel).read_text()
        if name is None:
            over = text.count("\n") > MAX_MODULE_LINES
        else:
            over = any(
                isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                and n.name == name
                and n.end_lineno is not None
                and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES
                for n in ast.walk(ast.parse(text))
            )
        if not over:
            stale.append(entry)
    assert not stale, f"no longer over the limit, remove from OVERSIZE: {stale}"


# The frozen snapshots themselves, and a reload's profiles staged for one configuration.
HOLDS_CONFIG = {
    ("engine/state.py", "RuntimeState"),
    ("tls/identities.py", "Staged"),
}


def _is_config(annotation: ast.expr) -> bool:
    return ast.unparse(annotation).replace(" ", "") in {"AgentConfig", "AgentConfig|None"}


def _config_holders(path: Path) -> Iterator[str]:
    """Classes of ``path`` that keep an ``AgentConfig``: a field annotated with it, or
    ``self.x = <a parameter annotated AgentConfig>`` in a method."""
    for cls in ast.walk(ast.parse(path.read_text())):
        if not isinstance(cls, ast.ClassDef):
            continue
        for node in cls.body:
            if isinstance(node, ast.AnnAssign) and _is_config(node.annotation):
                yield cls.name
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = node.args.args + node.args.kwonlyargs
            typed = {a.arg for a in args if a.annotation and _is_config(a.annotation)}
            for stmt in ast.walk(node):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else []
                if isinstance(stmt, ast.AnnAssign):
                    targets = [stmt.target]
                value = getattr(stmt, "value", None)
                stores = any(
                    isinstance(t, ast.Attribute)
                    and isinstance(t.value, ast.Name)
                    and t.value.id == "self"
                    for t in targets
                )
                if stores and isinstance(value, ast.Name) and value.id in typed:
                    yield cls.name


def test_only_the_runtime_state_keeps_the_configuration() -> None:
    """Components get the state (or the part they need) per job; none keeps a config of its own,
    so a reload is one swap and no component can run on a stale copy."""
    holders = {
        (str(path.relative_to(AGENT)), name) for path in modules() for name in _config_holders(path)
    }
    assert holders - HOLDS_CONFIG == set(), (
        f"classes keeping an AgentConfig: {sorted(holders - HOLDS_CONFIG)}"
    )
