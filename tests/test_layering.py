"""The layering rules of STYLE.md, checked by walking every import with ast.

The arrows: ``images/`` imports nothing above it, ``images/qcow2/`` (the format)
nothing from ``images/jobs/`` (the job engine), ``commands/`` no terminal or socket
library; every socket lives in ``monitor/``.  And no import circle anywhere: the
imports between the project's modules (module level or inside functions alike)
form no cycle.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("images", "commands", "monitor", "bench", "tests")

TERMINAL_AND_SOCKETS = {"prompt_toolkit", "rich", "pygments", "asyncio", "socket",
                        "socketserver"}

# package (dotted prefix) -> module prefixes it must not import
FORBIDDEN = {
    "images": {"commands", "monitor"} | TERMINAL_AND_SOCKETS,
    "images.qcow2": {"images.jobs"},
    "commands": {"monitor"} | TERMINAL_AND_SOCKETS,
}

# Circles known when this test was written, to be broken by the branch layout-cmds
# (issue 9: a small shared module for QEMU's key=value,, syntax).  The lead empties it.
ALLOWED_CYCLES = {
    frozenset({"monitor.chardev", "monitor.drive_options"}),
}


def module_name(path):
    """'images/qcow2/format.py' -> 'images.qcow2.format'; a package's __init__ is the package."""
    rel = os.path.relpath(path, ROOT)[:-len(".py")].split(os.sep)
    if rel[-1] == "__init__":
        rel = rel[:-1]
    return ".".join(rel)


def python_files(package):
    for dirpath, _, filenames in os.walk(os.path.join(ROOT, package)):
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def imports_of(path, module):
    """(dotted name, line) of everything ``path`` imports; relative imports resolved.

    ``from a.b import c`` yields 'a.b' and 'a.b.c' (c may be a module)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    is_package = os.path.basename(path) == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([base] if base else []))
            if base:
                yield base, node.lineno
            for alias in node.names:
                yield (base + "." if base else "") + alias.name, node.lineno


def under(name, prefix):
    return name == prefix or name.startswith(prefix + ".")


def project_modules():
    return {module_name(path): path for package in PACKAGES for path in python_files(package)}


def import_graph(modules):
    """module -> set of project modules it imports.  A bare name that is no top-level
    module but a module of tests/ (``from conftest import ...``: pytest puts tests/ on
    sys.path) is that test module."""
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name, _ in imports_of(path, module):
            if name not in modules and "tests." + name in modules:
                name = "tests." + name
            if name in modules and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def cycles(graph):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_above_it(package):
    modules = {m: p for m, p in project_modules().items() if under(m, package)}
    assert modules, "package %s has no modules" % package
    offenders = sorted(
        "%s:%d imports %s" % (os.path.relpath(path, ROOT), line, name)
        for module, path in modules.items()
        for name, line in imports_of(path, module)
        if any(under(name, banned) for banned in FORBIDDEN[package]))
    assert offenders == []


def test_no_import_circle():
    found = set(cycles(import_graph(project_modules())))
    assert sorted(sorted(c) for c in found - ALLOWED_CYCLES) == []


def test_walker_sees_a_forbidden_import(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("import os\nfrom monitor.repl import x\n")
    assert ("monitor.repl", 2) in list(imports_of(str(sample), "images.m"))


def test_walker_resolves_relative_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("from ..jobs import stream\nfrom .format import X\n")
    names = [name for name, _ in imports_of(str(sample), "images.qcow2.m")]
    assert "images.jobs.stream" in names and "images.qcow2.format" in names


def test_cycle_finder_sees_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]
    assert cycles({"a": {"b"}, "b": set()}) == []


def private_members_used(path):
    """(line, expression) for every ``x._name`` in ``path`` where x is not self, cls or super()."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        if isinstance(owner, ast.Call) and getattr(owner.func, "id", None) == "super":
            continue
        if node.attr == "_replace":     # NamedTuple's public API
            continue
        yield node.lineno, ast.unparse(node)


def test_the_job_engine_uses_no_private_member_of_an_image():
    """The copy path calls the format's public batch-write entry point (copy_batch),
    not the writer's private methods."""
    offenders = ["%s:%d %s" % (os.path.relpath(path, ROOT), line, expr)
                 for path in python_files(os.path.join("images", "jobs"))
                 for line, expr in private_members_used(path)]
    assert offenders == []


def test_private_member_finder_sees_one(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f(top):\n    top._install(1)\n    self._ok()\n    super()._ok()\n")
    assert list(private_members_used(str(sample))) == [(2, "top._install")]
