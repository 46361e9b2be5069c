"""The dirty bitmap commands through the real core: QEMU 7.2's texts (reference 5.4),
query-block's dirty-bitmaps, what marks a bitmap (guest writes, write-zeroes and
discard) and what does not (a stream's copies, a disabled bitmap), merge, and the
console's own commands."""
import pytest

from conftest import require_qemu, run
from oracle import check_clean, info

from commands.core import BlockCore
from commands.errors import CommandError, qmp_error
from commands.hmp import HmpInterpreter

SIZE = 16 << 20


@pytest.fixture
def core(tmp_path):
    require_qemu()
    base = str(tmp_path / "base.qcow2")
    top = str(tmp_path / "top.qcow2")
    raw = str(tmp_path / "raw0.img")
    run("qemu-img", "create", "-q", "-f", "qcow2", base, str(SIZE))
    run("qemu-io", "-c", "write -P 0xbb 0 4M", base)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
    run("qemu-img", "create", "-q", "-f", "raw", raw, str(SIZE))
    core = BlockCore()
    core.add_drive("virtio0", top)
    core.add_drive("raw0", raw, format="raw")
    yield core
    core.shutdown()


def error_of(core, name, arguments):
    with pytest.raises(Exception) as err:
        core.execute(name, arguments)
    return qmp_error(err.value)["desc"]


def bitmaps_of(core, device="virtio0"):
    block = next(d for d in core.execute("query-block") if d["device"] == device)
    return block["inserted"].get("dirty-bitmaps")


def guest(core, command, device="virtio0"):
    return core.execute("x-blockmon-qemu-io", {"device": device, "command": command})


def add(core, name, **extra):
    return core.execute("block-dirty-bitmap-add", dict(node="virtio0", name=name, **extra))


@pytest.mark.parametrize("arguments,text", [
    ({"node": "nosuch", "name": "bmx"}, "Cannot find device='nosuch' nor node-name='nosuch'"),
    ({"node": "virtio0", "name": "bmg", "granularity": 1000},
     "Granularity must be power of 2 and at least 512"),
    ({"node": "virtio0", "name": "bmg", "granularity": 256},
     "Granularity must be power of 2 and at least 512"),
    ({"node": "virtio0", "name": ""}, "Bitmap name cannot be empty"),
    ({"node": "raw0", "name": "bmr", "persistent": True},
     "Can't store persistent bitmaps to raw0: Operation not supported"),
    # better than QEMU, which accepts it and loses the bitmap at quit
    ({"node": "base", "name": "bmc", "persistent": True},
     "Can't make bitmap 'bmc' persistent in 'base': No write access"),
    ({"node": "virtio0", "name": "x" * 1024, "persistent": True},
     "Can't make bitmap '%s' persistent in 'virtio0': Name length exceeds maximum "
     "(1023 characters)" % ("x" * 1024)),
])
def test_add_refusals_change_nothing(core, arguments, text):
    assert error_of(core, "block-dirty-bitmap-add", arguments) == text
    assert bitmaps_of(core) is None and bitmaps_of(core, "raw0") is None


def test_add_query_and_the_other_refusals(core):
    add(core, "bm0", persistent=True)
    assert error_of(core, "block-dirty-bitmap-add", {"node": "virtio0", "name": "bm0"}) == \
        "Bitmap already exists: bm0"
    add(core, "bm1", persistent=True, granularity=131072, disabled=True)
    core.execute("block-dirty-bitmap-add", {"node": "raw0", "name": "bmr"})
    core.execute("block-dirty-bitmap-add", {"node": "base", "name": "bmc"})
    guest(core, "write -P 0x55 0 100k")
    assert bitmaps_of(core) == [
        {"name": "bm1", "recording": False, "persistent": True, "busy": False,
         "granularity": 131072, "count": 0},
        {"name": "bm0", "recording": True, "persistent": True, "busy": False,
         "granularity": 65536, "count": 131072}]
    assert bitmaps_of(core, "raw0") == [{"name": "bmr", "recording": True, "persistent": False,
                                         "busy": False, "granularity": 65536, "count": 0}]
    for verb in ("clear", "remove", "enable", "disable"):
        name = "block-dirty-bitmap-" + verb
        assert error_of(core, name, {"node": "virtio0", "name": "nosuch"}) == \
            "Dirty bitmap 'nosuch' not found"
        assert error_of(core, name, {"node": "nosuch", "name": "bm0"}) == "Node 'nosuch' not found"
    core.execute("block-dirty-bitmap-clear", {"node": "virtio0", "name": "bm0"})
    core.execute("block-dirty-bitmap-remove", {"node": "top", "name": "bm1"})   # a node name
    assert bitmaps_of(core) == [{"name": "bm0", "recording": True, "persistent": True,
                                 "busy": False, "granularity": 65536, "count": 0}]


def test_guest_writes_zero_writes_and_discards_mark_a_stream_does_not(core):
    add(core, "all")
    add(core, "off", disabled=True)
    core.execute("block-stream", {"device": "virtio0"})
    assert core.wait_jobs(timeout=60)
    image = core.active_image("virtio0")
    assert image.backing is None            # the stream copied 4 MiB into the top
    assert image.dirty_bitmaps.get("all").count() == 0
    guest(core, "write 1M 1")
    guest(core, "write -z 5M 64k")
    guest(core, "discard 9M 128k")
    guest(core, "read 12M 1M")              # reads mark nothing
    assert image.dirty_bitmaps.get("all").extents() == [
        (1 << 20, 65536), (5 << 20, 65536), (9 << 20, 131072)]
    assert image.dirty_bitmaps.get("off").count() == 0
    core.execute("block-dirty-bitmap-enable", {"node": "virtio0", "name": "off"})
    guest(core, "write 15M 4k")
    core.execute("block-dirty-bitmap-disable", {"node": "virtio0", "name": "all"})
    guest(core, "write 14M 4k")
    assert image.dirty_bitmaps.get("off").extents() == [(14 << 20, 65536), (15 << 20, 65536)]
    assert image.dirty_bitmaps.get("all").count() == 5 * 65536       # 15M, not 14M


def test_merge_into_a_target(core):
    add(core, "a", granularity=4096)
    add(core, "b")
    add(core, "target", disabled=True)
    core.execute("block-dirty-bitmap-add", {"node": "raw0", "name": "other"})
    guest(core, "write 0 4k")
    core.execute("block-dirty-bitmap-disable", {"node": "virtio0", "name": "a"})
    guest(core, "write 1M 4k")
    merge = {"node": "virtio0", "target": "target", "bitmaps": ["a"]}
    core.execute("block-dirty-bitmap-merge", merge)
    image = core.active_image("virtio0")
    assert image.dirty_bitmaps.get("target").extents() == [(0, 65536)]
    merge["bitmaps"] = ["b", {"node": "virtio0", "name": "nosuch"}]
    assert error_of(core, "block-dirty-bitmap-merge", merge) == "Dirty bitmap 'nosuch' not found"
    assert image.dirty_bitmaps.get("target").extents() == [(0, 65536)]     # unchanged
    merge["bitmaps"] = ["b", {"node": "raw0"}]
    assert error_of(core, "block-dirty-bitmap-merge", merge) == \
        "Parameter 'bitmaps[1].name' is missing"
    merge["bitmaps"] = [7]
    assert error_of(core, "block-dirty-bitmap-merge", merge) == \
        "Invalid parameter type for 'bitmaps[0]', expected: BlockDirtyBitmapOrStr"
    merge["bitmaps"] = ["b", {"node": "raw0", "name": "other"}]
    core.execute("block-dirty-bitmap-merge", merge)
    assert image.dirty_bitmaps.get("target").extents() == [(0, 65536), (1 << 20, 65536)]


def test_snapshot_stores_the_bitmaps_of_the_old_top(core, tmp_path):
    add(core, "b0", persistent=True)
    guest(core, "write 2M 4k")
    core.execute("blockdev-snapshot-sync", {"device": "virtio0",
                                            "snapshot-file": str(tmp_path / "new.qcow2")})
    old = str(tmp_path / "top.qcow2")
    assert info(old)["format-specific"]["data"]["bitmaps"] == [
        {"flags": ["auto"], "name": "b0", "granularity": 65536}]
    assert check_clean(old)[0]
    assert error_of(core, "block-dirty-bitmap-clear", {"node": "top", "name": "b0"}) == \
        "Bitmap 'b0' is readonly and cannot be modified"
    guest(core, "write 3M 4k")              # the new top has no bitmap; b0 keeps its state
    assert core.devices.node("top").dirty_bitmaps.get("b0").extents() == [(2 << 20, 65536)]
    output = HmpInterpreter(core).run_line("info dirty-bitmaps virtio0").output
    assert output == ("virtio0 (top):\n"
                      "    b0: 65536 dirty bytes, granularity 65536, recording, persistent\n")


def test_console_commands(core):
    hmp = HmpInterpreter(core)
    assert hmp.run_line("block_dirty_bitmap_add -p virtio0 b0").output == ""
    assert hmp.run_line("block_dirty_bitmap_add -d virtio0 b1 128k").output == ""
    hmp.run_line('qemu-io virtio0 "write 0 100k"')
    assert hmp.run_line("info dirty-bitmaps").output == (
        "virtio0 (top):\n"
        "    b1: 0 dirty bytes, granularity 131072, disabled\n"
        "    b0: 131072 dirty bytes, granularity 65536, recording, persistent\n"
        "raw0: no dirty bitmaps\n")
    assert hmp.run_line("block_dirty_bitmap_clear virtio0 b0").output == ""
    assert hmp.run_line("block_dirty_bitmap_remove virtio0 b1").output == ""
    result = hmp.run_line("block_dirty_bitmap_remove virtio0 b1")
    assert (result.output, result.ok) == ("Error: Dirty bitmap 'b1' not found\n", False)
    assert hmp.run_line("info dirty-bitmaps virtio0").output == (
        "virtio0 (top):\n"
        "    b0: 0 dirty bytes, granularity 65536, recording, persistent\n")


def test_v2_images_cannot_store_bitmaps(tmp_path):
    require_qemu()
    path = str(tmp_path / "old.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", path, "1M")
    core = BlockCore()
    core.add_drive("virtio0", path)
    try:
        with pytest.raises(CommandError) as err:
            add(core, "b", persistent=True)
        assert err.value.desc == ("Can't make bitmap 'b' persistent in 'virtio0': Cannot store "
                                  "dirty bitmaps in qcow2 v2 files")
        add(core, "b")
    finally:
        core.shutdown()
