"""Real NBD clients against blockmon's export and against qemu-nbd serving a copy of the
same chain: qemu-img, qemu-io, nbdinfo and nbdcopy must see the same thing from both."""
import json
import os

import pytest

from conftest import require_tool, run
from nbd_helpers import Blockmon, QemuNbd, build_chain, copy_chain, qemu_img_map


@pytest.fixture
def pair(tmp_path):
    """(blockmon, qemu-nbd, blockmon's top, qemu-nbd's top), both serving the chain writable."""
    pristine = build_chain(str(tmp_path))
    ours = copy_chain(str(tmp_path), str(tmp_path / "ours"))
    theirs = copy_chain(str(tmp_path), str(tmp_path / "theirs"))
    blockmon = Blockmon(ours, str(tmp_path / "ours"),
                        exports=("type=nbd,id=D,node-name=virtio0,name=D,writable=on,"
                                 "allocation-depth=on",))
    qemu_nbd = QemuNbd(theirs, str(tmp_path / "theirs"), allocation_depth=True)
    yield blockmon, qemu_nbd, ours, theirs, pristine
    qemu_nbd.stop()
    blockmon.stop()


def test_qemu_img_info_map_compare_convert_match_qemu_nbd(pair, tmp_path):
    blockmon, qemu_nbd, ours, theirs, pristine = pair
    info = run("qemu-img", "info", blockmon.uri()).stdout
    assert "file format: raw" in info and "virtual size: 16 MiB (16777216 bytes)" in info
    assert info.replace(blockmon.sock, "S") == run("qemu-img", "info", qemu_nbd.uri()).stdout.replace(
        qemu_nbd.sock, "S")
    ours_map, theirs_map = qemu_img_map(blockmon.uri()), qemu_img_map(qemu_nbd.uri())
    assert ours_map == theirs_map
    assert {(e["zero"], e["data"]) for e in ours_map} == {(True, False), (False, True)}
    assert run("qemu-img", "compare", "-f", "raw", "-F", "raw", blockmon.uri(),
               qemu_nbd.uri()).stdout == "Images are identical.\n"
    assert run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", blockmon.uri(),
               pristine).returncode == 0
    converted = str(tmp_path / "converted.qcow2")
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", blockmon.uri(), converted)
    assert run("qemu-img", "compare", converted, pristine).stdout == "Images are identical.\n"
    # holes stay holes: the converted image allocates no more than the data
    theirs_converted = str(tmp_path / "theirs.qcow2")
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", qemu_nbd.uri(), theirs_converted)
    assert guest_map(converted) == guest_map(theirs_converted)


def guest_map(path):
    """The converted image's allocation, without host offsets (convert writes in parallel)."""
    entries = json.loads(run("qemu-img", "map", "--output=json", path).stdout)
    return [{k: v for k, v in e.items() if k != "offset"} for e in entries]


QEMU_IO_SCRIPT = ["write -P 0x5a 64K 128K", "read -P 0x5a 64K 128K", "write -z 1M 256K",
                  "read -P 0 1M 256K", "discard 4M 1M", "write -P 0x33 15M 1M",
                  "read -P 0x33 15M 1M", "write -z 2M 1M", "read -P 0xd4 512K 64K",
                  "write 16M 512", "read -P 0xa2 3200K 64K"]


def test_qemu_io_over_nbd_matches_qemu_nbd(pair):
    blockmon, qemu_nbd, ours, theirs, pristine = pair
    outputs = []
    for target in (blockmon.uri(), qemu_nbd.uri()):
        argv = ["qemu-io", "-f", "raw"]
        for command in QEMU_IO_SCRIPT:
            argv += ["-c", command]
        result = run(*(argv + [target]), check=False)
        lines = [line for line in (result.stdout + result.stderr).splitlines()
                 if " ops; " not in line]           # timing lines differ run to run
        outputs.append((result.returncode, lines))
    assert outputs[0] == outputs[1]
    assert "Pattern verification failed" not in "\n".join(outputs[0][1])
    assert "write failed: Invalid argument" in outputs[0][1] or any(
        "write failed" in line for line in outputs[0][1])        # past the end
    blockmon.stop()
    qemu_nbd.stop()
    # after the discard at 4M the content is unspecified; everywhere else the images agree
    contents = []
    for top in (ours, theirs):
        raw = top + ".raw"
        run("qemu-img", "convert", "-O", "raw", top, raw)
        with open(raw, "rb") as f:
            data = f.read()
        contents.append(data[:4 << 20] + data[5 << 20:])
    assert contents[0] == contents[1]
    assert contents[0][64 << 10:192 << 10] == b"\x5a" * (128 << 10)
    assert "No errors were found" in run("qemu-img", "check", ours).stdout


def test_read_only_export_refuses_writes_like_qemu_nbd(tmp_path):
    top = build_chain(str(tmp_path))
    blockmon = Blockmon(top, str(tmp_path), exports=("type=nbd,id=D,node-name=virtio0,name=D",))
    try:
        opened = run("qemu-io", "-f", "raw", "-c", "write 0 4K", blockmon.uri(), check=False)
        assert opened.returncode != 0
        assert "Could not open image: Permission denied" in opened.stderr
        read = run("qemu-io", "-r", "-f", "raw", "-c", "read -P 0xa1 0 64K", blockmon.uri())
        assert "read 65536/65536 bytes at offset 0" in read.stdout
        missing = run("qemu-img", "info", blockmon.uri("nosuch"), check=False)
        assert "server reported: export 'nosuch' not present" in missing.stderr
    finally:
        blockmon.stop()


def test_nbdinfo_list_and_map_match_qemu_nbd(pair):
    require_tool("nbdinfo", "libnbd-bin")
    blockmon, qemu_nbd, *_ = pair
    listing = run("nbdinfo", "--list", "--json", blockmon.uri().replace("/D?", "/?")).stdout
    theirs = run("nbdinfo", "--list", "--json", qemu_nbd.uri().replace("/D?", "/?")).stdout
    assert listing.replace(blockmon.sock, "S") == theirs.replace(qemu_nbd.sock, "S")
    for context in ("base:allocation", "qemu:allocation-depth"):
        ours = run("nbdinfo", "--map=" + context, blockmon.uri()).stdout
        assert ours and ours == run("nbdinfo", "--map=" + context, qemu_nbd.uri()).stdout


def test_nbdcopy_copies_the_disk_out_and_in(pair, tmp_path):
    require_tool("nbdcopy", "libnbd-bin")
    blockmon, qemu_nbd, ours, theirs, pristine = pair
    raw = str(tmp_path / "disk.raw")
    run("nbdcopy", blockmon.uri(), raw)
    assert run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, pristine).returncode == 0
    assert os.stat(raw).st_blocks * 512 < os.path.getsize(raw)       # holes stayed holes
    run("qemu-io", "-f", "raw", "-c", "write -P 0x77 5M 1M", raw)
    run("nbdcopy", raw, blockmon.uri())
    assert run("qemu-img", "compare", "-f", "raw", "-F", "raw", raw, blockmon.uri()).returncode == 0


def test_blockstats_count_nbd_and_qemu_io_requests(pair):
    blockmon, *_ = pair
    run("qemu-io", "-f", "raw", "-c", "write -P 1 0 64K", "-c", "read 0 128K", "-c", "flush",
        blockmon.uri())
    qmp = blockmon.qmp()
    try:
        stats = qmp.execute("query-blockstats")[0]["stats"]
        assert (stats["wr_bytes"], stats["wr_operations"]) == (65536, 1)
        assert (stats["rd_bytes"], stats["rd_operations"]) == (131072, 1)
        assert stats["flush_operations"] >= 1 and stats["wr_highest_offset"] == 65536
        qmp.execute("human-monitor-command",
                    {"command-line": 'qemu-io virtio0 "read 0 4K"'})
        text = qmp.execute("human-monitor-command", {"command-line": "info blockstats"})
        assert text.startswith("virtio0: rd_bytes=135168 wr_bytes=65536 rd_operations=2 "
                               "wr_operations=1 flush_operations=")
    finally:
        qmp.close()


def test_nbd_writes_mark_dirty_bitmaps_like_the_guest_path(pair):
    blockmon, *_ = pair
    qmp = blockmon.qmp()
    try:
        qmp.execute("block-dirty-bitmap-add", {"node": "virtio0", "name": "b"})
        run("qemu-io", "-f", "raw", "-c", "write -P 9 1M 64K", "-c", "write -z 2M 64K",
            blockmon.uri())
        nodes = qmp.execute("x-blockmon-query-dirty-bitmaps")
        bitmap = [b for n in nodes if n["node-name"] == "D" for b in n["dirty-bitmaps"]][0]
        assert bitmap["count"] == 2 * 65536
    finally:
        qmp.close()
