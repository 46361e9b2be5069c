"""The in-memory dirty bitmap against a model: a set of dirty granule indices."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from images.dirty_bitmap import DirtyBitmap

G = 4096


def model_runs(dirty, size):
    runs, start = [], None
    for index in range(-(-size // G) + 1):
        if index in dirty and start is None:
            start = index
        elif index not in dirty and start is not None:
            runs.append((start * G, min(index * G, size) - start * G))
            start = None
    return runs


def model_count(dirty, size):
    return sum(min((i + 1) * G, size) - i * G for i in dirty)


ranges = st.tuples(st.integers(0, 40 * G), st.integers(0, 12 * G))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["set", "clear", "take"]), ranges), max_size=30),
       st.integers(1, 33 * G))
def test_bitmap_matches_a_granule_set(ops, size):
    bitmap, dirty = DirtyBitmap(size, G), set()
    granules = -(-size // G)
    for op, (offset, length) in ops:
        end = min(offset + length, size)
        if op == "set":
            bitmap.set(offset, length)
            if length and offset < size:
                dirty |= set(range(offset // G, -(-end // G)))
        elif op == "clear":
            bitmap.clear(offset, length)
            first = -(-offset // G)
            last = granules if end >= size else end // G
            dirty -= set(range(first, last))
        else:
            taken = bitmap.take(offset, length)
            covered = {o // G + i for o, n in taken for i in range(-(-n // G))}
            assert covered <= dirty
            assert all(o >= offset // G * G for o, _n in taken)
            dirty -= covered
        assert bitmap.count() == model_count(dirty, size)
        assert list(bitmap.iter_dirty()) == model_runs(dirty, size)
        for index in range(granules):
            assert bitmap.is_dirty(index * G) == (index in dirty)


def test_partial_clear_keeps_the_granule_dirty():
    bitmap = DirtyBitmap(10 * G, G)
    bitmap.set(100, 1)
    bitmap.clear(0, G - 1)
    assert bitmap.count() == G
    bitmap.clear(0, G)
    assert bitmap.count() == 0


def test_last_granule_is_clipped_to_the_disk():
    bitmap = DirtyBitmap(G + 512, G)
    bitmap.set(0, G + 512)
    assert bitmap.count() == G + 512
    assert list(bitmap.iter_dirty()) == [(0, G + 512)]
    assert bitmap.take(0, 1 << 30) == [(0, G + 512)]
    assert bitmap.count() == 0


def test_take_cuts_at_granules_and_takes_at_least_one():
    bitmap = DirtyBitmap(100 * G, G)
    bitmap.set(0, 10 * G)
    assert bitmap.take(0, 3 * G + 5) == [(0, 3 * G)]
    assert bitmap.take(0, 1) == [(3 * G, G)]
    assert bitmap.count() == 6 * G


def test_granularity_must_be_a_power_of_two():
    with pytest.raises(ValueError):
        DirtyBitmap(G, 1000)
    with pytest.raises(ValueError):
        DirtyBitmap(G, 256)
