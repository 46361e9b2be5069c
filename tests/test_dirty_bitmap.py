"""The in-memory dirty bitmap against a model (a set of granules), its serialised form,
and the per-node bitmap list: order, lookups and QEMU's refusal texts."""
import pytest
from hypothesis import given, settings, strategies as st

from images.dirty_bitmap import (BUSY, CHECK_DEFAULT, INCONSISTENT, READONLY, BitmapError,
                                 DirtyBitmap, NodeBitmaps)

SIZE = 1 << 20 | 12345          # not a whole number of granules: the last one is partial
GRAN = 4096


def model_granules(ops, size, gran):
    dirty = set()
    last = -(-size // gran)
    for op, offset, length in ops:
        if op == "set" and length:
            dirty |= set(range(offset // gran, (offset + length - 1) // gran + 1))
        elif op == "reset":
            lo = -(-offset // gran)
            hi = last if offset + length >= size else (offset + length) // gran
            dirty -= set(range(lo, hi))
        elif op == "clear":
            dirty = set()
    return dirty


def extents_of(granules, size, gran):
    out = []
    for g in sorted(granules):
        lo, hi = g * gran, min(size, (g + 1) * gran)
        if out and out[-1][0] + out[-1][1] == lo:
            out[-1] = (out[-1][0], out[-1][1] + hi - lo)
        else:
            out.append((lo, hi - lo))
    return out


ranges = st.integers(0, SIZE - 1).flatmap(
    lambda off: st.tuples(st.just(off), st.integers(0, min(SIZE - off, 200000))))
operations = st.lists(st.tuples(st.sampled_from(["set", "set", "reset", "clear"]), ranges)
                      .map(lambda t: (t[0], t[1][0], t[1][1])), max_size=30)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_bitmap_matches_a_set_of_granules(ops):
    bitmap = DirtyBitmap("b", SIZE, GRAN)
    for op, offset, length in ops:
        if op == "set":
            bitmap.set_dirty(offset, length)
        elif op == "reset":
            bitmap.reset(offset, length)
        else:
            bitmap.clear()
    dirty = model_granules(ops, SIZE, GRAN)
    assert bitmap.count() == len(dirty) * GRAN
    assert bitmap.extents() == extents_of(dirty, SIZE, GRAN)
    for g in list(dirty)[:5]:
        assert bitmap.is_dirty(g * GRAN + 1)
    # next_extent: the first extent of what lies at or after an offset
    for probe in (0, 1, GRAN * 7 + 5, SIZE // 2, SIZE - 1) + tuple(o for _, o, _ in ops[:5]):
        after = bitmap.extents(probe, SIZE - probe)
        assert bitmap.next_extent(probe) == (after[0] if after else None)
    # the serialised form round-trips, and has bit j of byte i for granule 8i+j
    data = bitmap.to_bytes(0, 8 * -(-bitmap.granules // 8))
    assert {i * 8 + j for i, byte in enumerate(data) for j in range(8) if byte >> j & 1} == dirty
    loaded = DirtyBitmap("c", SIZE, GRAN)
    loaded.load_bytes(data, 0)
    assert loaded.extents() == bitmap.extents()


def test_extents_are_clipped_to_the_range_and_the_disk():
    bitmap = DirtyBitmap("b", SIZE, GRAN)
    bitmap.set_dirty(SIZE - 10, 10)
    bitmap.set_dirty(0, 1)
    assert bitmap.count() == 2 * GRAN           # whole granules, the partial last one too
    assert bitmap.extents() == [(0, GRAN), (SIZE // GRAN * GRAN, SIZE % GRAN)]
    assert bitmap.extents(100, 50) == [(100, 50)]
    assert bitmap.extents(GRAN, SIZE - GRAN - 1) == [(SIZE // GRAN * GRAN, SIZE % GRAN - 1)]


def test_merge_takes_byte_ranges_across_granularities():
    fine = DirtyBitmap("fine", SIZE, 512)
    fine.set_dirty(5000, 10)
    coarse = DirtyBitmap("coarse", SIZE, 65536)
    coarse.merge_from(fine)
    assert coarse.extents() == [(0, 65536)]
    fine.merge_from(coarse)
    assert fine.extents() == [(0, 65536)]


def test_whole_blocks_load_without_decoding_each_bit():
    bitmap = DirtyBitmap("b", 1 << 40, 65536)        # 1 TiB: 16M granules
    data = bytearray(2 << 20)
    data[:4096] = b"\xff" * 4096
    data[-1] = 0x80
    bitmap.load_bytes(bytes(data), 0)
    assert bitmap.extents() == [(0, 4096 * 8 * 65536), ((1 << 40) - 65536, 65536)]


def test_node_list_is_newest_first_with_qemu_texts():
    node = NodeBitmaps()
    node.create("a", SIZE, GRAN)
    node.create("b", SIZE, GRAN, enabled=False)
    assert [b.name for b in node] == ["b", "a"]
    with pytest.raises(BitmapError) as err:
        node.create("a", SIZE, GRAN)
    assert err.value.desc == "Bitmap already exists: a"
    with pytest.raises(BitmapError) as err:
        node.create("x" * 1024, SIZE, GRAN)
    assert err.value.desc == "Bitmap name too long: " + "x" * 1024
    with pytest.raises(BitmapError) as err:
        node.get("nosuch")
    assert err.value.desc == "Dirty bitmap 'nosuch' not found"
    node.mark(0, 1)
    assert (node.get("a").count(), node.get("b").count()) == (GRAN, 0)


@pytest.mark.parametrize("state,refused,text", [
    ("busy", BUSY, "Bitmap 'b' is currently in use by another operation and cannot be used"),
    ("readonly", READONLY, "Bitmap 'b' is readonly and cannot be modified"),
    ("inconsistent", INCONSISTENT, "Bitmap 'b' is inconsistent and cannot be used"),
])
def test_state_checks(state, refused, text):
    bitmap = DirtyBitmap("b", SIZE, GRAN)
    bitmap.check(CHECK_DEFAULT)
    setattr(bitmap, state, True)
    bitmap.check(CHECK_DEFAULT & ~refused)
    with pytest.raises(BitmapError) as err:
        bitmap.check(CHECK_DEFAULT)
    assert err.value.desc == text
