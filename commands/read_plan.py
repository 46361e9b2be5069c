"""A guest read as a plan: which bytes are holes, which are read now, which are sent
from an image file later (NBD's structured read with ``sendfile``).

``plan_read(top, offset, length)`` walks the chain once (the caller holds the device's
I/O lock, the walk takes the top's lock) and returns a ``ReadPlan`` of pieces:

- ``(offset, length, None)``: reads as zeros (unallocated everywhere, or zero clusters);
- ``(offset, length, bytes)``: read under the lock (compressed clusters, wrapped
  images, and data of a *writable* image, whose clusters a later write or discard may
  change or hand to another guest offset);
- ``(offset, length, FileRange)``: plain data of a *read-only* layer, sent straight
  from the file by the caller after the lock is released.

Why a read-only layer's bytes may be sent after the lock is released: no one rewrites
or frees an allocated cluster of an image opened read-only (a stream only fills the
top's unallocated clusters; a guest writes to the top).  What may happen meanwhile is
a switch or close: a stream ends and closes the images it streamed out, a snapshot
reopens the old top read-only.  So each file range reads from a descriptor of the
plan's own (the layer's file opened again through /proc/self/fd), closed by
``ReadPlan.close()`` once the bytes are sent; the file stays open for the read
whatever the graph does, and holds none of the image's locks.
"""
import errno
import os
from bisect import bisect_right
from collections import OrderedDict
from typing import List, NamedTuple, Optional, Union

from images.chain import chain_of, extents_above
from images.driver import DATA, Run
from images.errors import BlockError, ImageIOError

MIN_FILE_RANGE = 64 * 1024  # below this a pread under the lock (batched replies) is cheaper
WINDOW = 8 * 1024 * 1024    # the extent cache's unit (an L2 table of 64 KiB clusters: 512 MiB)
CACHED_WINDOWS = 16         # a sequential reader per connection needs one or two


class FileRange(NamedTuple):
    """``length`` bytes of the file ``fd`` at ``offset`` (bytes past its end read as zero)."""
    fd: int
    offset: int
    length: int

    def __len__(self):
        return self.length


class Piece(NamedTuple):
    offset: int
    length: int
    data: Union[None, bytes, FileRange]


class ReadPlan:
    """The pieces of one read, in order, and the descriptors they need until sent."""

    def __init__(self):
        self.pieces: List[Piece] = []
        self._fds = {}              # id(layer) -> duplicate descriptor

    def add(self, offset: int, length: int, data) -> None:
        """Append a piece, merged with the last one when both are holes or both are
        contiguous ranges of one file."""
        if self.pieces:
            last = self.pieces[-1]
            if data is None and last.data is None:
                self.pieces[-1] = Piece(last.offset, last.length + length, None)
                return
            if (isinstance(data, FileRange) and isinstance(last.data, FileRange)
                    and data.fd == last.data.fd and last.data.offset + last.length == data.offset):
                joined = FileRange(data.fd, last.data.offset, last.length + length)
                self.pieces[-1] = Piece(last.offset, last.length + length, joined)
                return
        self.pieces.append(Piece(offset, length, data))

    def descriptor(self, layer) -> Optional[int]:
        """A descriptor of ``layer``'s file of the plan's own, one per layer and plan
        (None: no /proc here, read under the lock instead).

        A new open file description, not a ``dup``: the image's lock bytes (open file
        description locks, images/locking.py) live on its own description, and a dup
        would keep them held after the image closed or reopened its file."""
        fd = self._fds.get(id(layer))
        if fd is None:
            try:
                fd = os.open("/proc/self/fd/%d" % layer.data_fd(), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
            self._fds[id(layer)] = fd
        return fd

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


def _pread(fd: int, length: int, offset: int) -> bytes:
    try:
        data = os.pread(fd, length, offset)
    except OSError as err:
        raise ImageIOError(errno=err.errno or errno.EIO, operation="read") from err
    return data if len(data) == length else data + bytes(length - len(data))


def _sendable(layer, extent) -> bool:
    return (extent.host_offset is not None and layer.read_only
            and extent.length >= MIN_FILE_RANGE and layer.data_fd() is not None)


class ExtentCache:
    """The chain's extents (``extents_above``) by aligned windows, kept while no layer's
    ``status_generation`` changes and the chain is the same; so a sequential reader
    walks four layers once per window instead of once per request.

    A changed key (a write that allocated, a new top, a stream's end) drops every
    window, and the request that sees it walks only its own range: a workload that
    writes between reads never pays for a window it does not use.  Chains with a
    layer that makes no promise (``None``) are never cached.  The caller serialises
    the calls (the device's I/O lock).
    """

    def __init__(self, window: int = WINDOW, windows: int = CACHED_WINDOWS):
        self.window = window
        self.limit = windows
        self._key = None
        self._windows = OrderedDict()   # window start -> (offsets, extents)

    def extents(self, top, chain, offset: int, length: int):
        key = _chain_key(chain)
        if key is None or key != self._key:
            self._key = key
            self._windows.clear()
            return extents_above(top, None, offset, length)
        try:
            return self._from_windows(top, chain, offset, length)
        except _WindowUnreadable:
            return extents_above(top, None, offset, length)

    def _from_windows(self, top, chain, offset, length):
        result, end = [], offset + length
        start = offset - offset % self.window
        while start < end:
            offsets, extents = self._window(top, chain, start)
            index = max(0, bisect_right(offsets, offset) - 1)
            while index < len(extents) and extents[index].offset < end:
                result.append(_clipped(extents[index], offset, end))
                index += 1
            start += self.window
        return result

    def _window(self, top, chain, start):
        cached = self._windows.get(start)
        if cached is not None:
            self._windows.move_to_end(start)
            return cached
        try:
            extents = extents_above(top, None, start, min(self.window, top.virtual_size - start))
        except BlockError:
            # Metadata that cannot be read near the request: the request alone decides
            # whether it fails (as it would without the cache); nothing is kept.
            self._key = None
            self._windows.clear()
            raise _WindowUnreadable from None
        cached = ([e.offset for e in extents], extents)
        if _chain_key(chain) == self._key:      # no layer changed during the walk
            self._windows[start] = cached
            if len(self._windows) > self.limit:
                self._windows.popitem(last=False)
        return cached


class _WindowUnreadable(Exception):
    pass


def _chain_key(chain):
    key = []
    for layer in chain:
        generation = layer.status_generation()
        if generation is None:
            return None
        key += (layer, generation)
    return tuple(key)


def _clipped(extent, offset, end):
    if offset <= extent.offset and extent.end <= end:
        return extent
    start, stop = max(offset, extent.offset), min(end, extent.end)
    host = extent.host_offset
    return Run(extent.kind, start, stop - start,
               None if host is None else host + start - extent.offset, extent.depth)


def plan_read(top, offset: int, length: int, cache: Optional[ExtentCache] = None) -> ReadPlan:
    """The plan of [offset, offset+length) of the chain below ``top`` (checked by the caller)."""
    plan = ReadPlan()
    try:
        with top.lock:
            chain = chain_of(top)
            extents = (cache.extents(top, chain, offset, length) if cache is not None
                       else extents_above(top, None, offset, length))
            for extent in extents:
                if extent.kind != DATA:
                    plan.add(extent.offset, extent.length, None)
                    continue
                layer = chain[extent.depth]
                with layer.lock:        # its descriptor stays the one its map describes
                    fd = plan.descriptor(layer) if _sendable(layer, extent) else None
                    if fd is not None:
                        plan.add(extent.offset, extent.length,
                                 FileRange(fd, extent.host_offset, extent.length))
                    elif extent.host_offset is not None and layer.data_fd() is not None:
                        # plain data: its bytes straight from the file, no second walk
                        plan.add(extent.offset, extent.length, _pread(
                            layer.data_fd(), extent.length, extent.host_offset))
                    else:
                        plan.add(extent.offset, extent.length,
                                 layer.read(extent.offset, extent.length))
    except BaseException:
        plan.close()
        raise
    return plan
