"""The project stands alone: nothing tracked reads outside the checkout (issue 10).

A fresh clone must pass its own tests with nothing beside it; CI runs the suite
from a clone in an empty temporary directory, and this test keeps paths to a
sibling ``shared`` directory out of the code, tests and scripts.
"""
import os
import re
import subprocess

from conftest import ROOT

# A path into a sibling 'shared' directory, however it is spelled.
SIBLING_PATH = re.compile(r"\.\./shared|(?<![\w-])shared/|[\"']shared[\"']")
THIS_FILE = os.path.relpath(os.path.abspath(__file__), ROOT)


def tracked_files():
    if os.path.isdir(os.path.join(ROOT, ".git")) or os.path.isfile(os.path.join(ROOT, ".git")):
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [name for name in out.decode().split("\0") if name]
    return [os.path.relpath(os.path.join(top, name), ROOT)
            for top, dirs, names in os.walk(ROOT) if "/." not in top for name in names]


def test_no_tracked_file_reads_a_sibling_shared_directory():
    offenders = []
    for name in tracked_files():
        skipped = name == THIS_FILE or name.startswith("tests/data/")
        if skipped or not os.path.isfile(os.path.join(ROOT, name)):
            continue
        with open(os.path.join(ROOT, name), encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                if SIBLING_PATH.search(line):
                    offenders.append("%s:%d: %s" % (name, number, line.strip()))
    assert offenders == []


def test_the_pattern_catches_each_spelling():
    for line in ('open("../shared/reference/x.txt")', 'os.path.join(ROOT, "shared", "bench")',
                 "SHARED = os.path.join(os.path.dirname(ROOT), 'shared')", "see shared/bench/README.md"):
        assert SIBLING_PATH.search(line), line
    for line in ("shared by the toolbar", "a shared lock", "qemu-img's shared \"write\" lock"):
        assert not SIBLING_PATH.search(line), line


def test_ci_runs_the_tests_in_a_fresh_clone_with_every_package_installed():
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as handle:
        ci = handle.read()
    for package in ("qemu-utils", "qemu-system-x86", "libnbd-bin", "linux-image-amd64", "busybox-static",
                    "tmux", "socat"):
        assert re.search(r"^packages=\(.*\b%s\b" % re.escape(package), ci, re.M), package
    clone = ci.index('git clone -q . "$tmp/blockmon"')
    assert clone < ci.index('cd "$tmp/blockmon"') < ci.index("export BLOCKMON_REQUIRE_QEMU=1")
