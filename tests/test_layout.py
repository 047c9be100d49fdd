"""The engine's rooms and floors (lumina_core/README.md), read from the source with ast: no import cycle between
modules, no room importing a room on its own floor or above, no ComfyUI import anywhere in lumina_core, and
every name the README's Python API shows importable from lumina_core itself."""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.path.join(ROOT, "lumina_core")

# floor of each room: a room imports only rooms on lower floors (errors and layout: the shared leaves)
FLOORS = {"errors": 0, "layout": 1, "memory": 2, "image": 2, "model": 3, "decoding": 4, "parallel": 5,
          "request": 6, "__init__": 7}


def engine_modules() -> dict[str, str]:
    """Dotted module name (lumina_core.x.y) -> path, for every .py file of the engine."""
    out = {}
    for folder, _, files in os.walk(ENGINE):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, name)
    return out


def imports_of(module: str, path: str, modules: dict[str, str]) -> set[str]:
    """Engine modules `module` imports anywhere in its file (function-level imports included: a lazy import
    is still a dependency), resolved to the most specific module that exists."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name in modules and name != module:
                found.add(name)
    # `from .x import y` where y is a function lists both .x and .x.y; keep the module
    return found


def room_of(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = engine_modules()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def test_every_module_is_in_a_room_with_a_floor(graph):
    homeless = sorted(m for m in graph if room_of(m) not in FLOORS)
    assert not homeless, f"put these in a room (lumina_core/README.md) or give their room a floor: {homeless}"


def test_no_room_imports_its_own_floor_or_above(graph):
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                    if room_of(m) != room_of(d) and FLOORS[room_of(d)] >= FLOORS[room_of(m)]
                    and room_of(m) != "__init__" and not m.endswith(".__init__"))
    assert not upward, "imports that go up (or sideways) between rooms:\n" + "\n".join(upward)


def test_no_import_cycle(graph):
    """Depth-first search over module imports (package __init__ files re-export their room: left out, since
    importing a submodule runs its package's __init__ without depending on it)."""
    edges = {m: {d for d in deps if not _is_package(d)} for m, deps in graph.items() if not _is_package(m)}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == "open":
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)


def _is_package(module: str) -> bool:
    return os.path.isfile(os.path.join(ROOT, *module.split("."), "__init__.py"))


def test_the_engine_never_imports_comfyui():
    offenders = []
    for path in engine_modules().values():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            offenders += [f"{os.path.relpath(path, ROOT)}: {n}" for n in names
                          if n.split(".")[0] in ("comfy", "comfy_api", "comfy_extras", "folder_paths", "server",
                                                 "nodes", "execution")]
    assert not offenders, offenders


def test_the_readme_python_api_imports_from_lumina_core_only():
    import lumina_core
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    deep = re.findall(r"(?:from |`)(lumina_core\.\w[\w.]*)", section)  # `from lumina_core.x import`, `lumina_core.x.y()`
    assert not deep, f"the README's Python API reaches inside the layout: {deep}"
    named = set()
    for line in re.findall(r"from lumina_core import ([^\n`]+)", section):
        named |= {n.strip(" ()") for n in line.split(",") if n.strip(" ()")}
    assert named, "the README's Python API shows no imports"
    missing = sorted(n for n in named if not hasattr(lumina_core, n))
    assert not missing, f"not importable from lumina_core: {missing}"
    assert set(lumina_core.__all__) >= named


def test_each_room_says_what_it_is_for_and_what_it_may_import():
    for room, floor in FLOORS.items():
        path = os.path.join(ENGINE, room, "__init__.py")
        if room in ("memory", "image", "model", "decoding", "parallel"):
            with open(path, encoding="utf-8") as f:
                doc = ast.get_docstring(ast.parse(f.read())) or ""
            assert "may import" in doc, f"{path}: the docstring says what the room is for and what it may import"
