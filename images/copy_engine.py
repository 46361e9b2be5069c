"""The stream's fast path: kernel-side copy of a batch of clusters into a qcow2 top.

A batch is planned once from the chain's extents (``chain.extents_above``): every
top cluster wholly covered by plain data extents (host offset known, in a layer
whose file can be read directly) is copied with ``os.copy_file_range`` into one
contiguous host run reserved for the whole batch; the bytes never pass through
Python.  Everything else (partial clusters at the edges of a run, compressed
clusters, zero and unallocated ranges, wrapped images such as the fault injector)
is handed back to the caller for the normal write path, which copies-on-write.

Disk order is the write path's (qcow2_writer): data, then the refcounts of the
new run (one pwrite per refcount block), then each touched L2 table's changed
slice once, then L1 for new tables.  A kill at any instant leaves at worst leaked
clusters, never an entry without a refcount, and the guest content unchanged.

``Writeback`` starts the kernel writing copied ranges back while the copy goes on
(``sync_file_range(SYNC_FILE_RANGE_WRITE)``), so the fsync that must precede the
job's completion has little left to do.  It is only a hint: durability still
comes from that fsync.
"""
import ctypes
import ctypes.util
import errno
import os
from typing import List, NamedTuple, Optional, Tuple

from .chain import extents_above
from .driver import DATA, UNALLOCATED, ZERO, Run
from .errors import ImageIOError
from .qcow2 import Qcow2Image
from .qcow2_format import QCOW_OFLAG_COPIED
from .raw import RawImage

SYNC_FILE_RANGE_WRITE = 2
MAX_COPY_CALL = 1 << 30      # one copy_file_range request; the kernel may do less
SCAN_BUDGET = 0.002          # seconds one planning pass may hold the top's lock
MAX_WINDOW = 1 << 50


class Piece(NamedTuple):
    """Bytes [guest, guest+length) of the top come from ``fd`` at ``source``."""
    guest: int
    length: int
    fd: int
    source: int
    depth: int          # of the layer below the top that holds it (for the edges)


def source_fd(image) -> Optional[int]:
    """The file descriptor whose bytes at a DATA extent's host offset are the data, or
    None when the image must be read through its own ``read`` (wrappers, other formats)."""
    if type(image) is Qcow2Image and image.io is not None:
        return image.io.fd
    if type(image) is RawImage:
        return image.fd
    return None


def fast_path_top(image) -> bool:
    """Only a plain, writable qcow2 top takes the fast path (a wrapper keeps its hooks)."""
    return type(image) is Qcow2Image and image.io is not None and not image.read_only


def work_extents(top, base, offset: int, length: int) -> List[Run]:
    """Extents below ``top`` (down to ``base``) that the top leaves unallocated and some
    layer decides (DATA or ZERO): what a stream of [offset, offset+length) must copy.
    Depths count from ``top.backing``.  Caller holds ``top.lock``."""
    work = []
    backing_end = top.backing.virtual_size
    for run in top.block_status(offset, length):
        if run.kind != UNALLOCATED:
            continue
        split = max(run.offset, min(run.end, backing_end))
        if split > run.offset:
            work.extend(e for e in extents_above(top.backing, base, run.offset, split - run.offset)
                        if e.kind != UNALLOCATED)
        # Past the end of a shorter backing image the top reads zeros (QEMU's rule).
        # Only a longer new backing file could show other bytes there: write zeros then.
        zero_end = min(run.end, base.virtual_size) if base is not None else split
        if zero_end > split:
            work.append(Run(ZERO, split, zero_end - split))
    return work


def clipped(extents: List[Run], start: int, end: int) -> List[Run]:
    """The parts of sorted ``extents`` inside [start, end)."""
    out = []
    for run in extents:
        lo, hi = max(run.offset, start), min(run.end, end)
        if lo >= hi:
            if run.offset >= end:
                break
            continue
        if (lo, hi) != (run.offset, run.end):
            host = None if run.host_offset is None else run.host_offset + lo - run.offset
            run = Run(run.kind, lo, hi - lo, host, run.depth)
        out.append(run)
    return out


def next_window(window: int, step: int, advance: int, elapsed: float) -> int:
    """How far the next planning pass looks: after a stretch with nothing to copy it
    looks four times further (a 1 TiB chain with little data is crossed in a few
    passes), while one pass stays within SCAN_BUDGET of lock time; after work, one step."""
    if advance < window:
        return step
    if elapsed > 4 * SCAN_BUDGET:
        return max(step, window // 4)
    if elapsed > SCAN_BUDGET:
        return window
    return min(window * 4, MAX_WINDOW)


def plan_batch(extents: List[Run], layers, cluster_size: int) -> Tuple[List[Piece], List[Run]]:
    """Split a batch's extents (depth relative to ``layers[1]``) into fast pieces, which
    cover whole top clusters, and the runs left for the normal path."""
    fast: List[Piece] = []
    rest: List[Run] = []
    span: List[Piece] = []          # guest-contiguous plain data pieces, not yet placed
    fds = {}
    for run in extents:
        fd = None
        if run.kind == DATA and run.host_offset is not None:
            if run.depth not in fds:
                fds[run.depth] = source_fd(layers[1 + run.depth])
            fd = fds[run.depth]
        if fd is None:
            _place(span, cluster_size, fast, rest)
            span = []
            rest.append(run)
            continue
        if span and span[-1].guest + span[-1].length != run.offset:
            _place(span, cluster_size, fast, rest)
            span = []
        span.append(Piece(run.offset, run.length, fd, run.host_offset, run.depth))
    _place(span, cluster_size, fast, rest)
    rest.sort(key=lambda r: r.offset)
    return fast, rest


def _place(span: List[Piece], cluster_size: int, fast: List[Piece], rest: List[Run]) -> None:
    """The whole clusters inside a contiguous span go fast; the edges go the normal way."""
    if not span:
        return
    start, end = span[0].guest, span[-1].guest + span[-1].length
    lo = -(-start // cluster_size) * cluster_size
    hi = end // cluster_size * cluster_size
    for piece in span:
        p_end = piece.guest + piece.length
        a, b = max(piece.guest, lo), min(p_end, hi)
        if a < b:
            fast.append(piece._replace(guest=a, length=b - a, source=piece.source + a - piece.guest))
        for c, d in ((piece.guest, min(p_end, lo)), (max(piece.guest, hi, lo), p_end)):
            if c < d:   # an edge: partial top cluster (the normal path reads it anew)
                rest.append(Run(DATA, c, d - c, None, piece.depth))


def copy_batch(top: Qcow2Image, pieces: List[Piece]) -> Tuple[int, int]:
    """Copy the pieces (sorted, whole top clusters, unallocated in the top) into one new
    host run; returns (host_offset, length) of the run.  Caller holds ``top.lock``."""
    if not pieces:
        return 0, 0
    top._check_writable()  # pylint: disable=protected-access
    _check_tables(top, pieces)
    csize = top.cluster_size
    total = sum(p.length for p in pieces)
    host = top.refcounts.reserve(total // csize)
    dest = host
    for fd, source, length in _coalesced(pieces):
        _copy(fd, top.io.fd, source, dest, length, top.path)
        dest += length
    top.refcounts.update(host, total, +1)
    _install_entries(top, pieces, host)
    return host, total


def _check_tables(top: Qcow2Image, pieces: List[Piece]) -> None:
    """Refuse, before anything is copied, a batch whose L2 tables (taken from L1) lie
    on other metadata: one check per L2 table touched, none per cluster.  The new run
    itself comes from the allocator, past all live metadata."""
    shift = top.map.cluster_bits * 2 - 3          # guest bytes per L2 table, as a shift
    last = -1
    for p in pieces:
        for l1_index in range(max(p.guest >> shift, last + 1),
                              ((p.guest + p.length - 1) >> shift) + 1):
            top._check_l2_target(l1_index, max(p.guest, l1_index << shift))  # pylint: disable=protected-access
            last = l1_index


def _coalesced(pieces: List[Piece]):
    """(fd, source, length) with pieces merged where the source is contiguous too."""
    cur = None
    for p in pieces:
        if cur and cur[0] == p.fd and cur[1] + cur[2] == p.source:
            cur[2] += p.length
        else:
            if cur:
                yield tuple(cur)
            cur = [p.fd, p.source, p.length]
    if cur:
        yield tuple(cur)


def _copy(src: int, dst: int, source: int, dest: int, length: int, path: str) -> None:
    """copy_file_range until done; past the source's end the data reads as zeros."""
    try:
        while length > 0:
            done = os.copy_file_range(src, dst, min(length, MAX_COPY_CALL), source, dest)
            if done == 0:
                os.pwrite(dst, bytes(length), dest)   # short source: zeros, as read() pads
                return
            source, dest, length = source + done, dest + done, length - done
    except OSError as err:
        raise ImageIOError("%s: write failed: %s" % (path, err.strerror),
                           errno=err.errno or errno.EIO, operation="write") from err


def _install_entries(top: Qcow2Image, pieces: List[Piece], host: int) -> None:
    """Point the top's L2 entries at the new run: one slice per L2 table."""
    bits = top.map.cluster_bits
    l2_bits = bits - 3
    tables = {}
    dest = host
    for p in pieces:
        for n in range(p.length >> bits):
            cluster = (p.guest >> bits) + n
            tables.setdefault(cluster >> l2_bits, []).append((cluster & ((1 << l2_bits) - 1),
                                                              dest + (n << bits)))
        dest += p.length
    for l1_index, slots in tables.items():
        first, last = slots[0][0], slots[-1][0]
        values = list(top.map.entries(l1_index, first, last - first + 1))
        for index, value in slots:
            if values[index - first]:
                raise ImageIOError("%s: cluster %d was allocated during the copy"
                                   % (top.path, (l1_index << l2_bits) + index),
                                   errno=errno.EIO, operation="write")
            values[index - first] = value | QCOW_OFLAG_COPIED
        top._install(l1_index, first, values)  # pylint: disable=protected-access


class Writeback:
    """Start writeback of copied ranges early (a hint; the final fsync makes them durable)."""

    _libc = None

    def __init__(self):
        self._call = self._resolve()

    @classmethod
    def _resolve(cls):
        if cls._libc is None:
            try:
                cls._libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
                cls._libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64,
                                                      ctypes.c_int64, ctypes.c_uint]
            except (OSError, AttributeError):
                cls._libc = False
        return cls._libc.sync_file_range if cls._libc else None

    def start(self, fd: int, offset: int, length: int) -> None:
        if self._call is not None and length > 0 and fd >= 0:
            self._call(fd, offset, length, SYNC_FILE_RANGE_WRITE)   # errors: only a hint
