"""No import circle among blockmon's modules (images/, commands/, monitor/), found by
walking every import with ast, including imports inside functions."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("images", "commands", "monitor")


def module_files(root, packages=PACKAGES):
    """{dotted module name: path} for every module of ``packages`` under ``root``."""
    found = {}
    for package in packages:
        for folder, dirs, files in os.walk(os.path.join(root, package)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in files:
                if name.endswith(".py"):
                    dotted = os.path.relpath(os.path.join(folder, name[:-3]), root).replace(os.sep, ".")
                    found[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = \
                        os.path.join(folder, name)
    return found


def _imports(name, path):
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[:len(parts) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            yield module
            yield from ("%s.%s" % (module, alias.name) for alias in node.names)


def import_graph(root, packages=PACKAGES):
    modules = module_files(root, packages)
    return {name: sorted({m for m in _imports(name, path) if m in modules and m != name})
            for name, path in modules.items()}


def find_cycle(graph):
    """One import circle as a list of module names (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in graph[node]:
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None
    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_circle_anywhere():
    graph = import_graph(ROOT)
    assert "monitor.chardev" in graph and "commands.table" in graph
    assert find_cycle(graph) is None


def test_the_walker_finds_a_circle_through_a_function_level_import(tmp_path):
    (tmp_path / "monitor").mkdir()
    (tmp_path / "monitor" / "__init__.py").write_text("")
    (tmp_path / "monitor" / "a.py").write_text("from monitor.b import x\n")
    (tmp_path / "monitor" / "b.py").write_text("def f():\n    from .a import y\n")
    assert find_cycle(import_graph(str(tmp_path), ("monitor",))) in (
        ["monitor.a", "monitor.b", "monitor.a"], ["monitor.b", "monitor.a", "monitor.b"])
