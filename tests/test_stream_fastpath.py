"""The stream's kernel-side fast path (images.jobs.copy_plan planning, images.qcow2.batch
copying), judged by qemu-img compare/check.

Every chain is streamed by a real BlockCore; the result must read exactly like the
chain did (qemu-img compare against an untouched copy), check clean, and drop (or
keep) the backing file as asked.  ``fast_bytes`` counts what went through
copy_file_range, so a test fails if the fast path silently stopped being used.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from commands.core import BlockCore
from images.driver import DATA, ZERO, Piece, Run
from images.jobs import copy_plan
from images.jobs.copy_plan import clipped, next_window, plan_batch
from images.qcow2 import batch
from tests.conftest import ROOT, run
from tests.oracle import check_clean, identical, info

K, M = 1024, 1 << 20


@pytest.fixture
def fast_bytes(monkeypatch):
    """A list that receives the length of every kernel-side copy."""
    seen = []
    real = batch._copy

    def counting(src, dst, source, dest, length, path):
        seen.append(length)
        return real(src, dst, source, dest, length, path)
    monkeypatch.setattr(batch, "_copy", counting)
    return seen


def build(directory, layers, size="4M"):
    """layers: [(name, create options, backing (name, fmt) or None, fmt, [qemu-io commands])]."""
    for name, options, backing, fmt, commands in layers:
        argv = ["qemu-img", "create", "-f", fmt]
        if options:
            argv += ["-o", options]
        if backing:
            argv += ["-b", backing[0], "-F", backing[1]]
        run(*argv, name, size, cwd=directory)
        for command in commands:
            run("qemu-io", "-f", fmt, "-c", command, name, cwd=directory)


def stream(directory, top="top.qcow2", **arguments):
    """Stream a copy of the chain; returns (streamed top, pristine top)."""
    pristine = os.path.join(directory, top)
    work = directory + "-work"
    run("cp", "-a", "--sparse=always", directory, work)
    path = os.path.join(work, top)
    core = BlockCore()
    core.add_drive("virtio0", path)
    assert core.execute("block-stream", dict(device="virtio0", **arguments)) == {}
    assert core.wait_jobs(timeout=120)
    core.shutdown()
    return path, pristine


def assert_same_and_clean(path, pristine):
    same, text = identical(path, pristine)
    assert same, text
    ok, text = check_clean(path)
    assert ok, text


def test_mixed_cluster_sizes_4k_base_under_64k_top(tmp_path, qemu_img, fast_bytes):
    d = str(tmp_path / "c")
    os.mkdir(d)
    build(d, [("base.qcow2", "cluster_size=4096", None, "qcow2",
               ["write -P 0x11 0 1M", "write -P 0x12 1540K 12K", "write -z 200K 8K"]),
              ("top.qcow2", "cluster_size=65536", ("base.qcow2", "qcow2"), "qcow2",
               ["write -P 0x13 64K 4K"])])
    path, pristine = stream(d)
    assert_same_and_clean(path, pristine)
    assert "backing-filename" not in info(path)
    assert sum(fast_bytes) >= 512 * K      # whole 64K clusters went through the kernel


def test_mixed_cluster_sizes_64k_base_under_4k_top(tmp_path, qemu_img, fast_bytes):
    d = str(tmp_path / "c")
    os.mkdir(d)
    build(d, [("base.qcow2", "cluster_size=65536", None, "qcow2",
               ["write -P 0x21 0 2M", "write -P 0x22 3000K 100K"]),
              ("top.qcow2", "cluster_size=4096", ("base.qcow2", "qcow2"), "qcow2",
               ["write -P 0x23 6K 2K", "write -z 512K 64K"])])
    path, pristine = stream(d)
    assert_same_and_clean(path, pristine)
    assert sum(fast_bytes) >= M


def test_compressed_zero_and_subcluster_layers(tmp_path, qemu_img, fast_bytes):
    d = str(tmp_path / "c")
    os.mkdir(d)
    build(d, [("a.qcow2", "", None, "qcow2",
               ["write -c -P 0x31 0 256K", "write -P 0x32 256K 1M", "write -c -P 0x33 2M 64K"]),
              ("b.qcow2", "", ("a.qcow2", "qcow2"), "qcow2",
               ["write -z 320K 128K", "write -P 0x34 70K 3K", "write -P 0x35 2100K 1K"]),
              ("top.qcow2", "", ("b.qcow2", "qcow2"), "qcow2", ["write -P 0x36 1M 512"])])
    path, pristine = stream(d)
    assert_same_and_clean(path, pristine)
    assert fast_bytes


def test_raw_base(tmp_path, qemu_img, fast_bytes):
    d = str(tmp_path / "c")
    os.mkdir(d)
    build(d, [("base.raw", "", None, "raw", ["write -P 0x41 64K 1M", "write -P 0x42 3M 5K"]),
              ("top.qcow2", "", ("base.raw", "raw"), "qcow2", ["write -P 0x43 128K 64K"])])
    path, pristine = stream(d)
    assert_same_and_clean(path, pristine)
    assert sum(fast_bytes) >= 900 * K


def test_partial_stream_keeps_base(tmp_path, qemu_img, fast_bytes):
    d = str(tmp_path / "c")
    os.mkdir(d)
    build(d, [("a.qcow2", "", None, "qcow2", ["write -P 0x51 0 4M"]),
              ("b.qcow2", "", ("a.qcow2", "qcow2"), "qcow2", ["write -P 0x52 1M 1M"]),
              ("top.qcow2", "", ("b.qcow2", "qcow2"), "qcow2", ["write -P 0x53 1536K 4K"])])
    path, pristine = stream(d, base=os.path.join(d + "-work", "a.qcow2"))
    assert_same_and_clean(path, pristine)
    assert info(path)["backing-filename"] == "a.qcow2"
    assert sum(fast_bytes) == M - 64 * K     # b's MiB but the cluster the top owns


def test_size_not_a_cluster_multiple(tmp_path, qemu_img, fast_bytes):
    d = str(tmp_path / "c")
    os.mkdir(d)
    build(d, [("base.qcow2", "", None, "qcow2", ["write -P 0x61 0 1000K"]),
              ("top.qcow2", "", ("base.qcow2", "qcow2"), "qcow2", [])], size="1000K")
    path, pristine = stream(d)
    assert_same_and_clean(path, pristine)
    assert sum(fast_bytes) == 960 * K        # the last, partial cluster goes the normal way


def test_rate_limited_stream_uses_the_fast_path_too(tmp_path, qemu_img, fast_bytes):
    d = str(tmp_path / "c")
    os.mkdir(d)
    build(d, [("base.qcow2", "", None, "qcow2", ["write -P 0x71 0 2M"]),
              ("top.qcow2", "", ("base.qcow2", "qcow2"), "qcow2", [])])
    path, pristine = stream(d, speed=64 * M)
    assert_same_and_clean(path, pristine)
    assert fast_bytes == [512 * K] * 4       # QEMU's chunk while a speed is set


STREAMER = """
import sys
sys.path.insert(0, %r)
from commands.core import BlockCore
core = BlockCore()
core.add_drive("virtio0", sys.argv[1])
core.execute("block-stream", {"device": "virtio0"})
print("started", flush=True)
core.wait_jobs()
core.shutdown()
"""


def test_kill_during_full_speed_stream(bench_chain_256m, tmp_path):
    pristine = os.path.join(bench_chain_256m, "D.qcow2")
    outcomes = set()
    for i, moment in enumerate((0.0, 0.01, 0.03, 0.06, 0.1)):
        chain = str(tmp_path / ("k%d" % i))
        run("cp", "-a", "--sparse=always", bench_chain_256m, chain)
        top = os.path.join(chain, "D.qcow2")
        child = subprocess.Popen([sys.executable, "-c", STREAMER % ROOT, top],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "started"
        time.sleep(moment)
        child.send_signal(signal.SIGKILL)
        child.wait()
        for name in "ABCD":
            ok, text = check_clean(os.path.join(chain, name + ".qcow2"), leaks_ok=True)
            assert ok, (moment, name, text)
        outcomes.add(info(top).get("backing-filename"))
        assert identical(top, pristine)[0], moment
        run("rm", "-rf", chain)
    assert "C.qcow2" in outcomes and outcomes <= {"C.qcow2", None}, outcomes


# -- planning, without files -------------------------------------------------------

class _Layer:
    pass


def test_plan_sends_partial_clusters_the_normal_way(monkeypatch):
    monkeypatch.setattr(copy_plan, "source_fd", lambda image: 7)
    layers = [_Layer(), _Layer()]
    extents = [Run(DATA, 10 * K, 150 * K, 1000 * K, 0), Run(ZERO, 160 * K, 32 * K, None, 0),
               Run(DATA, 192 * K, 64 * K, None, 0)]
    fast, rest = plan_batch(extents, layers, 64 * K)
    assert fast == [Piece(64 * K, 64 * K, 7, 1054 * K, 0)]
    assert rest == [Run(DATA, 10 * K, 54 * K, None, 0), Run(DATA, 128 * K, 32 * K, None, 0),
                    extents[1], extents[2]]


def test_plan_joins_pieces_of_two_layers_into_whole_clusters(monkeypatch):
    monkeypatch.setattr(copy_plan, "source_fd", lambda image: 5)
    extents = [Run(DATA, 0, 40 * K, 0, 0), Run(DATA, 40 * K, 24 * K, 900 * K, 1)]
    fast, rest = plan_batch(extents, [_Layer()] * 3, 64 * K)
    assert fast == [Piece(0, 40 * K, 5, 0, 0), Piece(40 * K, 24 * K, 5, 900 * K, 1)]
    assert rest == []


def test_clipped_keeps_host_offsets_in_step():
    extents = [Run(DATA, 0, 100, 1000, 0), Run(ZERO, 100, 50, None, 1)]
    assert clipped(extents, 60, 120) == [Run(DATA, 60, 40, 1060, 0), Run(ZERO, 100, 20, None, 1)]


def test_next_window_grows_over_empty_stretches_within_the_budget():
    assert next_window(16 * M, 16 * M, 16 * M, 0.0001) == 64 * M
    assert next_window(64 * M, 16 * M, 10 * M, 0.0001) == 16 * M          # found work
    assert next_window(64 * M, 16 * M, 64 * M, 1.0) == 16 * M             # too slow: shrink
    assert next_window(64 * M, 16 * M, 64 * M, 0.005) == 64 * M
