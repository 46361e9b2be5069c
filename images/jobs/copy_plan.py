"""The format-free copy planner of the block jobs (the fast path of stream and commit).

A batch is planned once from the chain's extents (``chain.extents_above``): every
top cluster wholly covered by plain data extents (host offset known, in a layer
whose file can be read directly: ``BlockImage.data_fd``) becomes a ``Piece`` for
the top's ``copy_batch`` (for qcow2: ``images/qcow2/batch``, a kernel-side copy
into one new host run).  Everything else (partial clusters at the edges of a run,
compressed clusters, zero and unallocated ranges, wrapped images such as the fault
injector) is handed back to the caller for the normal write path, which
copies-on-write.

``copy_extents`` is the one copy step both jobs take: the stream copies into the
top (whose clusters there are unallocated), the commit into the base (which may
already hold data there: ``overwrite``, copied in place over clusters the base
alone holds as plain data).

``Writeback`` starts the kernel writing copied ranges back while the copy goes on
(``sync_file_range(SYNC_FILE_RANGE_WRITE)``), so the fsync that must precede the
job's completion has little left to do.  It is only a hint: durability still
comes from that fsync.
"""
import ctypes
import ctypes.util
from typing import List, Optional, Tuple

from ..chain import extents_above
from ..driver import DATA, UNALLOCATED, ZERO, Piece, Run

SYNC_FILE_RANGE_WRITE = 2
SCAN_BUDGET = 0.002          # seconds one planning pass may hold the top's lock
MAX_WINDOW = 1 << 50


def source_fd(image) -> Optional[int]:
    """The file descriptor whose bytes at a DATA extent's host offset are the data, or
    None when the image must be read through its own ``read`` (wrappers, other formats)."""
    return image.data_fd()


def fast_path_top(image) -> bool:
    """Only a plain, writable top that takes batch copies (qcow2; a wrapper keeps its
    hooks) takes the fast path."""
    return image.takes_batch_copy()


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


def copy_extents(target, layers, extents: List[Run], overwrite: bool = False):
    """Copy ``extents`` (depth relative to ``layers[1]``, where ``layers[0]`` is
    ``target``) into ``target``: whole clusters of plain data kernel-side, the rest
    (edges, compressed, zero ranges) through the write path.  Returns (bytes copied,
    host ranges written kernel-side, for ``Writeback``).  Caller holds ``target.lock``."""
    rest, copied, written = extents, 0, []
    if fast_path_top(target):
        fast, rest = plan_batch(extents, layers, target.cluster_size)
        if overwrite and fast:
            fast, other, written = target.overwrite_batch(fast)
            copied += sum(length for _host, length in written)
            rest = sorted(rest + [Run(DATA, p.guest, p.length, None, p.depth) for p in other],
                          key=lambda r: r.offset)
        host, length = target.copy_batch(fast)
        if length:
            written.append((host, length))
        copied += length
    for run in rest:
        copied += _copy_run(target, layers, run)
    return copied, written


def _copy_run(target, layers, run: Run) -> int:
    if run.kind == UNALLOCATED:
        return 0
    if run.kind == ZERO:
        target.write_zeroes(run.offset, run.length)
        return run.length
    # DATA: read it from the layer that holds it
    target.write(run.offset, layers[1 + run.depth].read(run.offset, run.length))
    return run.length


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

    def start_all(self, fd: Optional[int], ranges) -> None:
        """One call for the span of all ``ranges`` (pages not dirty there cost nothing)."""
        if ranges:
            low = min(offset for offset, _ in ranges)
            high = max(offset + length for offset, length in ranges)
            self.start(-1 if fd is None else fd, low, high - low)
