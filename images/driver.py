"""The interface every image format offers, and the run type that block status returns.

A ``BlockImage`` is one layer of a backing chain.  ``backing`` links it to the layer
below (another ``BlockImage``, or None).  Reads fall through to the backing image for
ranges this layer does not allocate; ``block_status`` describes this layer alone.

Guest offsets are bytes.  Every public method takes ``self.lock`` (a re-entrant
lock) for its whole duration, so a caller that holds the lock can make a sequence of
calls (check status, then write) atomic with respect to other threads.

An open image holds QEMU's lock bytes on its file (``images/locking.py``): the
role its mode gives it (read-only or read-write) plus what jobs claim on top
(``claim_permissions``), given back with ``release_permissions``.
"""
import threading
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional

from .locking import READ_ONLY, READ_WRITE, FileLock, Permissions

from .dirty_bitmap import NodeBitmaps

# The image formats blockmon opens and creates (QEMU's driver names): the one list.
FORMATS = ("qcow2", "raw")

DATA = "data"              # this layer holds the bytes
ZERO = "zero"              # this layer says: reads as zero (qcow2 zero flag)
UNALLOCATED = "unallocated"  # this layer does not say; read the backing image


@dataclass(frozen=True)
class Run:
    """A maximal range of one kind.

    ``host_offset`` is where DATA lives in the image file when it is stored plainly
    (None for compressed clusters, ZERO and UNALLOCATED).  ``depth`` is used by chain
    status: the index of the layer that decided the kind (0 = the top).
    """
    kind: str
    offset: int
    length: int
    host_offset: Optional[int] = None
    depth: int = 0

    @property
    def end(self) -> int:
        return self.offset + self.length


class Piece(NamedTuple):
    """For a batch copy: bytes [guest, guest+length) of the target come from ``fd`` at
    ``source``; ``depth`` is the layer below the target that holds them."""
    guest: int
    length: int
    fd: int
    source: int
    depth: int


class BlockImage:
    """Base class of image formats. Subclasses implement the methods that raise."""

    format_name = "?"

    def __init__(self, path: str, read_only: bool):
        self.path = path
        self.read_only = read_only
        self.lock = threading.RLock()
        self.backing: Optional["BlockImage"] = None
        self.backing_name: Optional[str] = None    # the string stored in the header
        self.backing_format: Optional[str] = None  # the format stored in the header
        self.node_name: Optional[str] = None       # set by whoever names the nodes
        self.dirty_bitmaps = NodeBitmaps()         # QEMU's bs->dirty_bitmaps
        # Called as f(offset, length) before each guest write, zero write or discard
        # (guest_io.GuestView): a backup copies the old data out first.
        self.before_guest_write: list = []
        # Called as f(kind, offset, length, data) after each guest write, zero write
        # or discard, the image's lock held (guest_io.GuestView): a mirror job.
        self.after_guest_write: list = []
        self.virtual_size = 0
        self.cluster_size = 512
        self.file_lock: Optional[FileLock] = None    # the lock bytes of the open file
        self._claims: Dict[object, Permissions] = {}  # owner (a job) -> what it adds

    # -- image locks ---------------------------------------------------------
    def wanted_permissions(self, read_only: Optional[bool] = None) -> Permissions:
        """The role of the mode (``read_only``, default the current one) plus the claims."""
        if read_only is None:
            read_only = self.read_only
        wanted = READ_ONLY if read_only else READ_WRITE
        for claim in self._claims.values():
            wanted = wanted.union(claim)
        return wanted

    def claim_permissions(self, owner, permissions: Permissions) -> None:
        """Hold ``permissions`` too until ``release_permissions(owner)``; ImageLockError
        (and nothing held) when another process's locks conflict."""
        with self.lock:
            self._claims[owner] = permissions
            try:
                self._apply_permissions()
            except BaseException:
                del self._claims[owner]
                raise

    def release_permissions(self, owner) -> None:
        with self.lock:
            if self._claims.pop(owner, None) is not None:
                self._apply_permissions()

    def _apply_permissions(self) -> None:
        if self.file_lock is not None:
            self.file_lock.change(self.wanted_permissions())

    def _lock_reopened(self, fd: int, read_only: bool) -> Optional[FileLock]:
        """The locks for ``fd``, a new descriptor of this file in mode ``read_only``.

        As QEMU's raw_check_perm: the new mode's permissions are taken (and checked)
        on the old descriptor, then copied to the new one, so the file is never
        unlocked in between; the caller then closes the old descriptor.
        """
        if self.file_lock is None:
            return None
        self.file_lock.change(self.wanted_permissions(read_only))
        return self.file_lock.copy_to(fd)

    # -- reads -------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        """Guest-visible bytes, falling through to ``backing`` (zeros past its end)."""
        raise NotImplementedError

    def block_status(self, offset: int, length: int) -> List[Run]:
        """Runs covering exactly [offset, offset+length), adjacent runs of a kind merged."""
        raise NotImplementedError

    def status_generation(self) -> Optional[int]:
        """A number that changes whenever ``block_status``'s answer may change (a write
        that allocates, a zero write, a discard), so a caller may keep an answer while
        the number stays; None when the format makes no such promise."""
        return None

    # -- writes ------------------------------------------------------------
    def write(self, offset: int, data: bytes) -> None:
        raise NotImplementedError

    def write_zeroes(self, offset: int, length: int) -> None:
        raise NotImplementedError

    def discard(self, offset: int, length: int) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def set_backing_reference(self, name: Optional[str], fmt: Optional[str]) -> None:
        """Rewrite the stored backing name and format (None removes both) atomically."""
        raise NotImplementedError

    def set_read_only(self, read_only: bool) -> None:
        """Reopen for reading only, or for writing (refusing what cannot be written)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- direct access for the kernel-side copy --------------------------------
    def data_fd(self) -> Optional[int]:
        """The file descriptor whose bytes at a DATA run's host offset are the data, or
        None when the image must be read through ``read`` (wrappers, other formats)."""
        return None

    def takes_batch_copy(self) -> bool:
        """True if ``copy_batch`` may be called now (a plain, writable image file)."""
        return False

    def copy_batch(self, pieces: List[Piece]):
        """Copy whole, unallocated clusters from other files into one new host run;
        returns (host_offset, length).  Only when ``takes_batch_copy()``."""
        raise NotImplementedError

    def overwrite_batch(self, pieces: List[Piece]):
        """Copy the whole-cluster pieces that land on data this image alone holds, in
        place; returns (pieces over unallocated clusters, other pieces, host ranges
        written).  Only when ``takes_batch_copy()``."""
        raise NotImplementedError

    def make_empty(self) -> None:
        """Drop every cluster, so the whole image reads through to its backing file
        (QEMU's bdrv_make_empty, after HMP ``commit``)."""
        raise NotImplementedError

    def info(self) -> dict:
        """qemu-img-info-like facts: format, virtual-size, cluster-size, actual-size,
        and for qcow2 a ``format-specific`` dict (compat, refcount-bits, ...)."""
        raise NotImplementedError

    def __repr__(self):
        return "<%s %s>" % (type(self).__name__, self.path)
