"""Shared fixtures: the qemu-utils oracle and scratch chains.

Tests that need qemu-img or qemu-io use the ``qemu_img`` fixture (or call
``require_qemu()``).  Without qemu-utils they skip with a hint; with
BLOCKMON_REQUIRE_QEMU=1 (set by CI) they fail instead.
"""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Recorded sessions and reference data live in the checkout: no test reads outside it.
DATA = os.path.join(ROOT, "tests", "data")
TRANSCRIPT = os.path.join(DATA, "qemu-7.2-transcript.txt")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

QEMU_HINT = "needs qemu-img and qemu-io: apt-get update && apt-get install -y qemu-utils"


def skip_or_fail(message):
    """A test that needs something missing: it skips with ``message``, except under
    BLOCKMON_REQUIRE_QEMU=1 (CI installs everything), where it fails instead."""
    if os.environ.get("BLOCKMON_REQUIRE_QEMU") == "1":
        pytest.fail(message)
    pytest.skip(message)


def require_qemu():
    """Skip (or fail under BLOCKMON_REQUIRE_QEMU=1) unless qemu-img and qemu-io exist."""
    missing = [tool for tool in ("qemu-img", "qemu-io") if shutil.which(tool) is None]
    if missing:
        skip_or_fail("%s missing; %s" % (", ".join(missing), QEMU_HINT))


def require_tool(name, package=None):
    """Skip (or fail under BLOCKMON_REQUIRE_QEMU=1) unless the program ``name`` is installed."""
    if shutil.which(name) is not None:
        return shutil.which(name)
    skip_or_fail("%s missing; apt-get install -y %s" % (name, package or name))


def require_qemu_system():
    """Skip (or fail under BLOCKMON_REQUIRE_QEMU=1) unless qemu-system-x86_64, qemu-img
    and qemu-io exist: the image-lock tests run the real QEMU beside blockmon."""
    require_qemu()
    require_tool("qemu-system-x86_64", "qemu-system-x86")


def run(*argv, check=True, **kw):
    """Run a command, returning CompletedProcess with text output."""
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, **kw)


def connect_when_listening(sock_path, deadline):
    """A unix socket's file appears at bind(), a moment before listen(): retry
    missing files and refusals until ``deadline`` (a time.monotonic() value)."""
    import socket
    import time
    while True:
        client = socket.socket(socket.AF_UNIX)
        client.settimeout(30)
        try:
            client.connect(sock_path)
            return client
        except (FileNotFoundError, ConnectionRefusedError):
            client.close()
            assert time.monotonic() < deadline, "the socket %s never accepted a connection" % sock_path
            time.sleep(0.05)


@pytest.fixture
def qemu_img():
    require_qemu()
    return shutil.which("qemu-img")


@pytest.fixture(scope="session")
def bench_chain_256m(tmp_path_factory):
    """The benchmark chain A <- B <- C <- D at 256 MiB, built once per session (read it, don't write it)."""
    from bench.make_chain import build_chain
    require_qemu()
    return build_chain("256M", str(tmp_path_factory.mktemp("chain256")))


@pytest.fixture
def chain_copy(bench_chain_256m, tmp_path):
    """A private, writable copy of the 256 MiB benchmark chain."""
    target = tmp_path / "chain"
    run("cp", "-a", "--sparse=always", bench_chain_256m, str(target))
    return str(target)


@pytest.fixture
def two_chains(tmp_path):
    from commands.core import BlockCore
    from images.qcow2 import create_qcow2
    MIB = 1 << 20
    """virtio0: A <- B <- C <- D (D stores "C.qcow2", ...); ide0-hd0: base <- disk."""
    previous = None
    for name in "ABCD":
        create_qcow2(str(tmp_path / (name + ".qcow2")), MIB, backing_name=previous)
        previous = name + ".qcow2"
    create_qcow2(str(tmp_path / "base.qcow2"), MIB)
    create_qcow2(str(tmp_path / "disk.qcow2"), MIB, backing_name=str(tmp_path / "base.qcow2"))
    core = BlockCore()
    core.add_drive("virtio0", str(tmp_path / "D.qcow2"))
    core.add_drive("ide0-hd0", str(tmp_path / "disk.qcow2"))
    yield core, tmp_path
    core.shutdown()
