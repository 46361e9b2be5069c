"""The layering rule of STYLE.md, checked by walking every import with ast."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FORBIDDEN = {
    "images": {"commands", "monitor", "prompt_toolkit", "rich", "pygments"},
    "commands": {"monitor", "prompt_toolkit", "rich", "pygments"},
}


def imported_top_names(path):
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


def python_files(package):
    for dirpath, _, filenames in os.walk(os.path.join(ROOT, package)):
        for name in filenames:
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_above_it(package):
    files = list(python_files(package))
    assert files, "package %s has no modules" % package
    offenders = [
        "%s:%d imports %s" % (os.path.relpath(path, ROOT), line, name)
        for path in files
        for name, line in imported_top_names(path)
        if name in FORBIDDEN[package]
    ]
    assert offenders == []


def test_walker_sees_a_forbidden_import(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("import os\nfrom monitor.repl import x\n")
    assert ("monitor", 2) in list(imported_top_names(str(sample)))
