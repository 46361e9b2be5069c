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
reopens the old top read-only.  So each file range reads from a duplicate of the
layer's descriptor, owned by the plan and closed by ``ReadPlan.close()`` once the
bytes are sent; the file stays open for the read whatever the graph does.
"""
import errno
import os
from typing import List, NamedTuple, Optional, Union

from images.chain import chain_of, extents_above
from images.driver import DATA
from images.errors import ImageIOError

MIN_FILE_RANGE = 4096       # below this a pread under the lock costs less than a sendfile


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
        """A duplicate of ``layer``'s data descriptor, one per layer and plan."""
        fd = self._fds.get(id(layer))
        if fd is None:
            source = layer.data_fd()
            if source is None:
                return None
            try:
                fd = self._fds[id(layer)] = os.dup(source)
            except OSError as err:
                raise ImageIOError(errno=err.errno or errno.EIO, operation="read") from err
        return fd

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


def _sendable(layer, run) -> bool:
    return (run.host_offset is not None and layer.read_only and run.length >= MIN_FILE_RANGE
            and layer.data_fd() is not None)


def plan_read(top, offset: int, length: int) -> ReadPlan:
    """The plan of [offset, offset+length) of the chain below ``top`` (checked by the caller)."""
    plan = ReadPlan()
    try:
        with top.lock:
            chain = chain_of(top)
            for run in extents_above(top, None, offset, length):
                if run.kind != DATA:
                    plan.add(run.offset, run.length, None)
                    continue
                layer = chain[run.depth]
                with layer.lock:        # its descriptor stays the one its map describes
                    if _sendable(layer, run):
                        fd = plan.descriptor(layer)
                        plan.add(run.offset, run.length,
                                 FileRange(fd, run.host_offset, run.length))
                    else:
                        plan.add(run.offset, run.length, layer.read(run.offset, run.length))
    except BaseException:
        plan.close()
        raise
    return plan
