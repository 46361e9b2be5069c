"""Issue 14 acceptance 2: persistent dirty bitmaps move between blockmon and QEMU both ways.

The oracles are QEMU's own tools: ``qemu-img info`` (the bitmap directory), ``qemu-img
check``, ``qemu-img bitmap`` (add, remove, merge, clear on files blockmon wrote), and a
bitmap's dirty ranges read through ``qemu-nbd -B`` by ``qemu-img map`` (x-dirty-bitmap)
and ``nbdinfo --map``.  In the other direction blockmon loads what ``qemu-img bitmap``,
``qemu-io`` and a real ``qemu-system-x86_64`` wrote.  A SIGKILL while a persistent
bitmap is in use leaves it IN_USE: both sides then call it inconsistent.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, connect_when_listening, require_qemu, run, skip_or_fail
from oracle import check_clean, info
from qmp_clients import QmpEventClient, remove_tree, short_tempdir

from commands.core import BlockCore

SIZE = 64 << 20


def require_tools(*tools):
    """Skip (or fail under BLOCKMON_REQUIRE_QEMU=1) unless every tool is installed."""
    require_qemu()
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        skip_or_fail("%s missing (Debian: qemu-utils, qemu-system-x86, libnbd-bin)" % ", ".join(missing))


def dirty_ranges(path, name):
    """The bitmap's dirty (offset, length) ranges as QEMU reads them: qemu-nbd exports
    it as qemu:dirty-bitmap:NAME and qemu-img map shows dirty ranges as data: false."""
    directory = short_tempdir()
    sock = os.path.join(directory, "nbd.sock")
    server = subprocess.Popen(["qemu-nbd", "-r", "-f", "qcow2", "-B", name, "-k", sock, path],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            assert server.poll() is None, server.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        out = run("qemu-img", "map", "--output=json", "--image-opts",
                  "driver=nbd,server.type=unix,server.path=%s,x-dirty-bitmap=qemu:dirty-bitmap:%s"
                  % (sock, name)).stdout
    finally:
        server.wait(timeout=30)
        remove_tree(directory)
    return [(e["start"], e["length"]) for e in json.loads(out) if not e["data"]]


def nbdinfo_dirty(path, name):
    out = run("nbdinfo", "--map=qemu:dirty-bitmap:" + name, "--", "[", "qemu-nbd", "-r", "-f",
              "qcow2", "-B", name, path, "]").stdout
    rows = [line.split() for line in out.splitlines()]
    return [(int(row[0]), int(row[1])) for row in rows if row[3] == "dirty"]


def stored_bitmaps(path, *flags):
    return info(path)["format-specific"]["data"].get("bitmaps", [])


def blockmon_script(path, *lines):
    """Run console lines on ``path`` as virtio0 in a blockmon process; its output."""
    result = subprocess.run([sys.executable, "-m", "monitor", "-q", path], cwd=ROOT,
                            input="\n".join(lines) + "\n", capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def loaded(path, read_only=True):
    """{name: (info, extents)} of the bitmaps blockmon loads from ``path``."""
    core = BlockCore()
    core.add_drive("virtio0", path, read_only=read_only)
    try:
        return {b.name: (b.info(), b.extents())
                for b in core.active_image("virtio0").dirty_bitmaps}
    finally:
        core.shutdown()


def new_image(tmp_path, name="disk.qcow2"):
    path = str(tmp_path / name)
    run("qemu-img", "create", "-q", "-f", "qcow2", path, str(SIZE))
    return path


# -- blockmon writes, QEMU reads ------------------------------------------------------

def test_bitmaps_blockmon_stores_are_read_and_edited_by_qemu_img(tmp_path):
    require_tools("qemu-nbd", "nbdinfo")
    path = new_image(tmp_path)
    blockmon_script(path, "block_dirty_bitmap_add -p virtio0 b0",
                    "block_dirty_bitmap_add -p -d virtio0 b1 128k",
                    "block_dirty_bitmap_add virtio0 temporary",
                    'qemu-io virtio0 "write 100k 100k"',
                    'qemu-io virtio0 "write -z 8M 64k"',
                    'qemu-io virtio0 "discard 16M 1k"')
    assert stored_bitmaps(path) == [
        {"flags": [], "name": "b1", "granularity": 131072},
        {"flags": ["auto"], "name": "b0", "granularity": 65536}]
    assert check_clean(path)[0]
    # 100k at 100k touches granules 1..3; the zero write one; the 1k discard one
    expected = [(65536, 196608), (8 << 20, 65536), (16 << 20, 65536)]
    assert dirty_ranges(path, "b0") == expected
    assert nbdinfo_dirty(path, "b0") == expected
    assert dirty_ranges(path, "b1") == []
    # qemu-img edits what blockmon wrote, and blockmon reads the result back
    run("qemu-img", "bitmap", "--add", path, "copy")
    run("qemu-img", "bitmap", "--merge", "b0", path, "copy")
    run("qemu-img", "bitmap", "--clear", path, "b0")
    run("qemu-img", "bitmap", "--remove", path, "b1")
    assert check_clean(path)[0]
    assert dirty_ranges(path, "copy") == expected
    bitmaps = loaded(path)
    assert sorted(bitmaps) == ["b0", "copy"]
    assert bitmaps["copy"] == ({"name": "copy", "recording": True, "persistent": True,
                                "busy": False, "granularity": 65536, "count": 327680}, expected)
    assert bitmaps["b0"][1] == []


def test_bitmaps_written_again_at_each_close_stay_clean(tmp_path):
    """A loaded bitmap is IN_USE while open and stored anew at close; the old tables
    and directories are freed (no leak after many rounds)."""
    require_tools("qemu-nbd")
    path = new_image(tmp_path)
    blockmon_script(path, "block_dirty_bitmap_add -p virtio0 b0")
    for n in range(4):
        blockmon_script(path, 'qemu-io virtio0 "write %dM 4k"' % (3 * n))
        assert check_clean(path)[0]
    assert dirty_ranges(path, "b0") == [((3 * n) << 20, 65536) for n in range(4)]
    blockmon_script(path, "block_dirty_bitmap_remove virtio0 b0")
    assert stored_bitmaps(path) == [] and check_clean(path)[0]
    assert "bitmaps" not in info(path)["format-specific"]["data"]


# -- QEMU writes, blockmon reads ------------------------------------------------------

def test_bitmaps_of_qemu_img_and_qemu_io_are_loaded(tmp_path):
    require_tools("qemu-nbd")
    path = new_image(tmp_path)
    run("qemu-img", "bitmap", "--add", "-g", "128k", path, "b0")
    run("qemu-img", "bitmap", "--add", "--disable", path, "off")
    run("qemu-io", "-c", "write 1M 100k", "-c", "write 40M 1", path)   # qemu-io records into b0
    expected = dirty_ranges(path, "b0")
    assert expected == [(1 << 20, 131072), (40 << 20, 131072)]
    bitmaps = loaded(path)
    assert bitmaps["b0"] == ({"name": "b0", "recording": True, "persistent": True,
                              "busy": False, "granularity": 131072, "count": 262144}, expected)
    assert bitmaps["off"][0]["recording"] is False and bitmaps["off"][1] == []


def test_bitmap_added_by_a_real_qemu_is_loaded(tmp_path):
    require_tools("qemu-system-x86_64", "qemu-nbd")
    path = new_image(tmp_path)
    directory = short_tempdir()
    sock = os.path.join(directory, "qmp.sock")
    qemu = subprocess.Popen(["qemu-system-x86_64", "-machine", "none", "-nodefaults",
                             "-display", "none", "-S", "-drive",
                             "if=none,id=virtio0,file=%s,format=qcow2" % path,
                             "-qmp", "unix:%s,server=on,wait=off" % sock],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        connect_when_listening(sock, time.monotonic() + 60).close()
        client = QmpEventClient(sock)
        client.sock.settimeout(60)
        assert client.cmd("block-dirty-bitmap-add", {"node": "virtio0", "name": "bm0",
                                                     "persistent": True}) == {"return": {}}
        reply = client.cmd("human-monitor-command",
                           {"command-line": 'qemu-io virtio0 "write -P 0x55 0 100k"'})
        assert "return" in reply, reply
        assert client.cmd("quit") == {"return": {}}
        assert qemu.wait(timeout=60) == 0
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
        remove_tree(directory)
    assert stored_bitmaps(path) == [{"flags": ["auto"], "name": "bm0", "granularity": 65536}]
    bitmaps = loaded(path)
    assert bitmaps["bm0"][0]["count"] == 131072                  # as QEMU counted it
    assert bitmaps["bm0"][1] == dirty_ranges(path, "bm0") == [(0, 131072)]


# -- a crash while a bitmap is in use -------------------------------------------------

def test_sigkill_leaves_the_bitmap_inconsistent_for_qemu_and_blockmon(tmp_path):
    require_tools()
    path = new_image(tmp_path)
    run("qemu-img", "bitmap", "--add", path, "b0")
    directory = short_tempdir()
    sock = os.path.join(directory, "qmp.sock")
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "-drive",
                             "file=%s,if=none,id=virtio0" % path,
                             "-qmp", "unix:%s,server=on,wait=off" % sock],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        connect_when_listening(sock, time.monotonic() + 60).close()
        client = QmpEventClient(sock)
        client.sock.settimeout(60)
        assert client.cmd("block-dirty-bitmap-add", {"node": "virtio0", "name": "later",
                                                     "persistent": True}) == {"return": {}}
        assert "return" in client.cmd("x-blockmon-qemu-io", {"device": "virtio0",
                                                             "command": "write 0 64k"})
        # while blockmon runs, the file already says b0 is in use
        running = run("qemu-img", "info", "-U", path).stdout
        assert "[0]: in-use" in running and "later" not in running
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        remove_tree(directory)
    assert stored_bitmaps(path) == [{"flags": ["in-use", "auto"], "name": "b0",
                                     "granularity": 65536}]
    assert check_clean(path, leaks_ok=True)[0]
    core = BlockCore()
    core.add_drive("virtio0", path)
    try:
        (device,) = core.execute("query-block")
        assert device["inserted"]["dirty-bitmaps"] == [
            {"name": "b0", "recording": True, "persistent": True, "busy": False,
             "granularity": 65536, "count": 0, "inconsistent": True}]
        with pytest.raises(Exception) as err:
            core.execute("block-dirty-bitmap-clear", {"node": "virtio0", "name": "b0"})
        assert err.value.desc == "Bitmap 'b0' is inconsistent and cannot be used"
        target = str(tmp_path / "inc.qcow2")       # never trusted for an incremental backup
        with pytest.raises(Exception) as err:
            core.execute("drive-backup", {"device": "virtio0", "target": target,
                                          "sync": "incremental", "bitmap": "b0"})
        assert err.value.desc == "Bitmap 'b0' is inconsistent and cannot be used"
        assert not os.path.exists(target)
        core.execute("block-dirty-bitmap-remove", {"node": "virtio0", "name": "b0"})
    finally:
        core.shutdown()
    assert stored_bitmaps(path) == [] and check_clean(path)[0]


def test_small_clusters_and_fine_granularity_span_many_bitmap_clusters(tmp_path):
    """4 KiB clusters and 512-byte granules: the bitmap data of a 100 MiB + 512 byte disk
    fills 7 clusters; both sides agree on every table entry, and on the partial end."""
    require_tools("qemu-nbd")
    path = str(tmp_path / "fine.qcow2")
    size = (100 << 20) + 512
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, str(size))
    run("qemu-img", "bitmap", "--add", "-g", "512", path, "theirs")
    run("qemu-io", "-c", "write 0 1", "-c", "write 33M 3k", "-c", "write 99M 1M", path)
    lines = ['qemu-io virtio0 "write %d %d"' % (offset, min(700, size - offset))
             for offset in (512 * 7, 17 << 20, (60 << 20) + 1000, size - 512)]
    blockmon_script(path, "block_dirty_bitmap_add -p virtio0 ours 512B", *lines)
    assert check_clean(path)[0]
    theirs = [(0, 512), (33 << 20, 3072), (99 << 20, 1 << 20)]
    ours = [(3584, 1024), (17 << 20, 1024), ((60 << 20) + 512, 1536), (size - 512, 512)]
    assert dirty_ranges(path, "ours") == ours
    # blockmon's writes went into "theirs" too (it was loaded and recording)
    assert dirty_ranges(path, "theirs") == [theirs[0], ours[0], ours[1], theirs[1], ours[2],
                                            (99 << 20, (1 << 20) + 512)]   # 99M..end, merged
    assert loaded(path)["ours"][1] == ours
