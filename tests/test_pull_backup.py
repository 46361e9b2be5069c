"""Pull backups over NBD: a dirty bitmap as the meta context ``qemu:dirty-bitmap:NAME``
(block-export-add ``bitmaps``, nbd-server-add ``bitmap``), read by nbdinfo and qemu-img
and compared with qemu-nbd exporting the same bitmap; and the point-in-time export of a
``drive-backup sync=none`` target read while a guest writes through the device."""
import json
import os
import subprocess

import pytest

from conftest import require_tool, run
from nbd_helpers import Blockmon, QemuNbd, build_chain, copy_chain, uri

MiB = 1 << 20


def add_bitmap_with_writes(top, writes, disable=True):
    """A persistent bitmap 'bm0' written by QEMU's own tools: qemu-io's writes mark it."""
    run("qemu-img", "bitmap", "--add", top, "bm0")
    argv = ["qemu-io", "-f", "qcow2"]
    for command in writes:
        argv += ["-c", command]
    run(*(argv + [top]))
    if disable:
        run("qemu-img", "bitmap", "--disable", top, "bm0")


WRITES = ("write -P 0x11 1M 100K", "write -P 0x12 5M 64K", "write -z 9M 192K",
          "write -P 0x13 16320K 64K")


def nbdinfo_map(target, context):
    out = run("nbdinfo", "--json", "--map=%s" % context, target).stdout
    return [(e["offset"], e["length"], e["type"]) for e in json.loads(out)]


def dirty_map(target, context, sock, name):
    """qemu-img's view through x-dirty-bitmap: dirty ranges read as 'data': false."""
    opts = ("driver=nbd,export=%s,server.type=unix,server.path=%s,x-dirty-bitmap=%s"
            % (name, sock, context))
    out = run("qemu-img", "map", "--output=json", "--image-opts", opts).stdout
    return [(e["start"], e["length"], not e["data"]) for e in json.loads(out)]


@pytest.fixture
def pair(tmp_path):
    """blockmon (no export yet) and qemu-nbd -B bm0, each on a copy of one chain whose
    top has the persistent, disabled bitmap bm0."""
    require_tool("nbdinfo", "libnbd-bin")
    build_chain(str(tmp_path))
    add_bitmap_with_writes(str(tmp_path / "D.qcow2"), WRITES)
    ours = copy_chain(str(tmp_path), str(tmp_path / "ours"))
    theirs = copy_chain(str(tmp_path), str(tmp_path / "theirs"))
    blockmon = Blockmon(ours, str(tmp_path / "ours"), exports=())
    require_tool("qemu-nbd", "qemu-utils")
    qemu_nbd = subprocess.Popen(["qemu-nbd", "-r", "-t", "-B", "bm0", "-f", "qcow2", "-x", "D",
                                 "-k", str(tmp_path / "q.sock"), theirs],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    from nbd_helpers import wait_for_socket
    wait_for_socket(str(tmp_path / "q.sock"), qemu_nbd)
    yield blockmon, str(tmp_path / "q.sock")
    qemu_nbd.terminate()
    qemu_nbd.wait(timeout=30)
    blockmon.stop()


def test_dirty_bitmap_context_matches_qemu_nbd(pair):
    blockmon, qsock = pair
    qmp = blockmon.qmp()
    assert qmp.execute("block-export-add", {"type": "nbd", "id": "D", "node-name": "D",
                                            "bitmaps": ["bm0"]}) == {}
    ours, theirs = blockmon.uri(), uri(qsock, "D")
    context = "qemu:dirty-bitmap:bm0"
    assert nbdinfo_map(ours, context) == nbdinfo_map(theirs, context)
    dirty = [(offset, length) for offset, length, kind in nbdinfo_map(ours, context) if kind]
    assert dirty == [(1 * MiB, 128 * 1024), (5 * MiB, 64 * 1024), (9 * MiB, 192 * 1024),
                     (16320 * 1024, 64 * 1024)]
    assert (dirty_map(ours, context, blockmon.sock, "D")
            == dirty_map(theirs, context, qsock, "D"))
    listing = run("nbdinfo", "--list", "--json", ours).stdout
    assert json.loads(listing)["exports"][0]["contexts"] == ["base:allocation", context]
    # base:allocation answers beside it, as before
    assert nbdinfo_map(ours, "base:allocation") == nbdinfo_map(theirs, "base:allocation")


def test_export_bitmap_errors_and_busy(pair):
    blockmon, _qsock = pair
    qmp = blockmon.qmp()
    export = {"type": "nbd", "id": "e", "node-name": "D"}

    def refused(arguments, command="block-export-add"):
        with pytest.raises(RuntimeError) as err:
            qmp.execute(command, arguments)
        return str(err.value).split(": ", 1)[1]

    assert refused(dict(export, bitmaps=["nosuch"])) == "Bitmap 'nosuch' is not found"
    assert refused(dict(export, bitmaps=[{"node": "nosuch", "name": "bm0"}])) == (
        "Node 'nosuch' not found")
    assert refused(dict(export, bitmaps=[{"node": "D", "name": "x"}])) == (
        "Dirty bitmap 'x' not found")
    assert refused(dict(export, bitmaps=[{"node": "D"}])) == "Parameter 'bitmaps[0].name' is missing"
    assert refused(dict(export, bitmaps=[7])) == (
        "Invalid parameter type for 'bitmaps[0]', expected: BlockDirtyBitmapOrStr")
    qmp.execute("block-dirty-bitmap-add", {"node": "virtio0", "name": "live"})
    assert refused(dict(export, bitmaps=["live"])) == (
        "Enabled bitmap 'live' incompatible with readonly export")
    assert refused({"device": "virtio0", "bitmap": "live"}, "nbd-server-add") == (
        "Enabled bitmap 'live' incompatible with readonly export")
    # a writable export may carry a recording bitmap
    assert qmp.execute("block-export-add", dict(export, id="w", name="w", writable=True,
                                                 bitmaps=["live"])) == {}
    assert qmp.execute("block-export-add", dict(export, bitmaps=["bm0"])) == {}
    busy = "Bitmap 'bm0' is currently in use by another operation and cannot be used"
    assert refused({"node": "virtio0", "name": "bm0"}, "block-dirty-bitmap-clear") == busy
    assert refused({"device": "virtio0", "name": "n2", "bitmap": "bm0"}, "nbd-server-add") == busy
    assert qmp.execute("block-export-del", {"id": "e"}) == {}
    assert qmp.execute("nbd-server-add", {"device": "virtio0", "name": "n2", "bitmap": "bm0"}) == {}
    assert nbdinfo_map(blockmon.uri("n2"), "qemu:dirty-bitmap:bm0")[1] == (1 * MiB, 128 * 1024, 1)
    assert qmp.execute("nbd-server-remove", {"name": "n2"}) == {}
    assert qmp.execute("block-dirty-bitmap-clear", {"node": "virtio0", "name": "bm0"}) == {}


def slice_of(sock, name, offset, length, path):
    """One range of the export read by qemu-img (the raw driver's offset/size window)."""
    opts = ("driver=raw,offset=%d,size=%d,file.driver=nbd,file.export=%s,"
            "file.server.type=unix,file.server.path=%s" % (offset, length, name, sock))
    run("qemu-img", "convert", "-O", "raw", "--image-opts", opts, path)
    with open(path, "rb") as f:
        return f.read()


def drive_backup_view(qmp, tmp_path):
    """blockmon's short way: drive-backup sync=none makes the scratch image and its node."""
    qmp.execute("drive-backup", {"job-id": "pull", "device": "virtio0", "sync": "none",
                                 "target": str(tmp_path / "overlay.qcow2"), "format": "qcow2"})
    return "overlay", lambda: None


def blockdev_backup_view(qmp, tmp_path):
    """libvirt's way: a scratch qcow2 without backing file, added as a node backed by the
    device's top, then blockdev-backup sync=none into it; blockdev-del at the end."""
    scratch = str(tmp_path / "scratch.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", scratch, str(16 * MiB))
    qmp.execute("blockdev-add", {"driver": "qcow2", "node-name": "scratch", "backing": "D",
                                 "file": {"driver": "file", "filename": scratch}})
    qmp.execute("blockdev-backup", {"job-id": "pull", "device": "virtio0", "sync": "none",
                                    "target": "scratch"})
    return "scratch", lambda: qmp.execute("blockdev-del", {"node-name": "scratch"})


@pytest.mark.parametrize("view", [drive_backup_view, blockdev_backup_view],
                         ids=["drive-backup", "blockdev-backup"])
def test_pull_backup_reads_the_disk_at_its_start_while_the_guest_writes(tmp_path, view):
    """The libvirt workflow: a new bitmap for next time, a sync=none backup into a
    temporary overlay (the point in time), the old bitmap disabled, the overlay exported
    with it; the guest writes through a second, writable export of the device while
    qemu-img and nbdinfo read the point-in-time export."""
    require_tool("nbdinfo", "libnbd-bin")
    top = build_chain(str(tmp_path))
    previous = str(tmp_path / "previous.raw")          # the last backup: the disk now
    run("qemu-img", "convert", "-O", "raw", top, previous)
    run("qemu-img", "bitmap", "--add", top, "bm0")
    blockmon = Blockmon(top, str(tmp_path))             # device virtio0, export D writable
    try:
        guest = blockmon.uri("D")
        run("qemu-io", "-f", "raw", "-c", "write -P 0x21 2M 256K", "-c", "write -z 8M 64K",
            "-c", "write -P 0x22 14M 1M", guest)
        at_start = str(tmp_path / "at-start.raw")
        run("qemu-img", "convert", "-f", "raw", "-O", "raw", guest, at_start)
        qmp = blockmon.qmp()
        qmp.execute("block-dirty-bitmap-add", {"node": "virtio0", "name": "bm1"})
        node, finish = view(qmp, tmp_path)
        qmp.execute("block-dirty-bitmap-disable", {"node": "virtio0", "name": "bm0"})
        qmp.execute("block-export-add", {"type": "nbd", "id": "pull", "node-name": node,
                                         "name": "pull", "bitmaps": ["bm0"]})
        # the guest overwrites dirty and clean ranges before and while the backup reads
        run("qemu-io", "-f", "raw", "-c", "write -P 0x31 2M 64K", "-c", "write -P 0x32 0 4M",
            guest)
        writer = subprocess.Popen(["qemu-io", "-f", "raw"] + sum(
            (["-c", "write -P 0x%02x %dK 192K" % (0x40 + i, (i * 1216) % 16000)]
             for i in range(60)), []) + [guest], stdout=subprocess.DEVNULL)
        context = "qemu:dirty-bitmap:bm0"
        dirty = [(o, n) for o, n, kind in nbdinfo_map(blockmon.uri("pull"), context) if kind]
        image = bytearray(open(previous, "rb").read())
        for offset, length in dirty:
            image[offset:offset + length] = slice_of(blockmon.sock, "pull", offset, length,
                                                     str(tmp_path / "slice.raw"))
        whole = str(tmp_path / "whole.raw")
        run("nbdcopy", blockmon.uri("pull"), whole)
        assert writer.wait(timeout=120) == 0
        assert dirty == [(2 * MiB, 256 * 1024), (8 * MiB, 64 * 1024), (14 * MiB, 1 * MiB)]
        assert (dirty_map(blockmon.uri("pull"), context, blockmon.sock, "pull")
                == [(0, 2 * MiB, False), (2 * MiB, 256 * 1024, True),
                    (2 * MiB + 256 * 1024, 6 * MiB - 256 * 1024, False),
                    (8 * MiB, 64 * 1024, True), (8 * MiB + 64 * 1024, 6 * MiB - 64 * 1024, False),
                    (14 * MiB, 1 * MiB, True), (15 * MiB, 1 * MiB, False)])
        incremental = str(tmp_path / "incremental.raw")
        with open(incremental, "wb") as f:
            f.write(image)
        for copy in (incremental, whole):
            assert run("qemu-img", "compare", "-f", "raw", "-F", "raw", copy,
                       at_start).stdout == "Images are identical.\n"
        live = str(tmp_path / "live.raw")
        run("qemu-img", "convert", "-f", "raw", "-O", "raw", guest, live)
        assert run("qemu-img", "compare", "-f", "raw", "-F", "raw", live, at_start,
                   check=False).returncode == 1          # the guest did change the disk
        # bm1 recorded the writes since the point in time: the next backup's bitmap
        bitmaps = qmp.execute("query-block")[0]["inserted"]["dirty-bitmaps"]
        assert {b["name"]: b["recording"] for b in bitmaps} == {"bm1": True, "bm0": False}
        assert qmp.execute("block-export-del", {"id": "pull"}) == {}
        assert qmp.execute("block-job-cancel", {"device": "pull"}) == {}
        qmp.wait_event("BLOCK_JOB_CANCELLED")
        finish()
    finally:
        blockmon.stop()
    assert run("qemu-img", "check", top).returncode == 0


def test_scratch_image_outlives_the_job_while_exported(tmp_path):
    """QEMU's export holds its node: cancelling the sync=none job first leaves the
    scratch image open and readable (what copy-before-write saved stays; writes after
    the cancel would show through, as in QEMU); it closes with the export."""
    require_tool("nbdinfo", "libnbd-bin")
    top = build_chain(str(tmp_path))
    blockmon = Blockmon(top, str(tmp_path))
    try:
        qmp = blockmon.qmp()
        at_start = str(tmp_path / "at-start.raw")
        run("qemu-img", "convert", "-f", "raw", "-O", "raw", blockmon.uri("D"), at_start)
        overlay = str(tmp_path / "overlay.qcow2")
        qmp.execute("drive-backup", {"job-id": "pull", "device": "virtio0", "sync": "none",
                                     "target": overlay, "format": "qcow2"})
        qmp.execute("block-export-add", {"type": "nbd", "id": "pull", "node-name": "overlay",
                                         "name": "pull"})
        run("qemu-io", "-f", "raw", "-c", "write -P 0x51 0 2M", blockmon.uri("D"))
        qmp.execute("block-job-cancel", {"device": "pull"})
        qmp.wait_event("BLOCK_JOB_CANCELLED")
        whole = str(tmp_path / "whole.raw")
        run("nbdcopy", blockmon.uri("pull"), whole)
        assert run("qemu-img", "compare", "-f", "raw", "-F", "raw", whole,
                   at_start).returncode == 0
        assert qmp.execute("query-block-exports")[0]["node-name"] == "overlay"
        opened = run("qemu-img", "info", overlay, check=False)       # no backing opened
        assert "Failed to get shared \"write\" lock" in opened.stderr       # still open
        qmp.execute("block-export-del", {"id": "pull"})
        qmp.wait_event("BLOCK_EXPORT_DELETED")
        closed = run("qemu-img", "info", overlay, check=False)
        assert closed.returncode == 0, closed.stderr
    finally:
        blockmon.stop()


def test_meta_context_queries_as_qemu_nbd():
    """nbd/server.c's query rules: LIST with ``qemu:`` or ``qemu:dirty-bitmap:`` lists
    the matching contexts, SET selects only exact names."""
    from monitor.nbd.negotiation import matching_contexts
    available = ["base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:a",
                 "qemu:dirty-bitmap:b"]
    assert matching_contexts(available, ["qemu:dirty-bitmap:"], True) == available[2:]
    assert matching_contexts(available, ["qemu:"], True) == available[1:]
    assert matching_contexts(available, [], True) == available
    assert matching_contexts(available, ["qemu:dirty-bitmap:"], False) == []
    assert matching_contexts(available, ["qemu:dirty-bitmap:b", "base:allocation"], False) == [
        "base:allocation", "qemu:dirty-bitmap:b"]
    assert matching_contexts(available, ["qemu:dirty-bitmap:c"], True) == []
