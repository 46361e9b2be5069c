"""Image locks, QEMU's protocol: which bytes of an image file an opener locks, and why.

QEMU's file driver (block/file-posix.c, ``raw_apply_lock_bytes``,
``raw_check_lock_bytes``, ``raw_handle_perm_lock``) describes what an opener does
with a file by two sets of permission bits (include/block/block-common.h): the
permissions it *uses* and the ones it *shares* with other openers.  On the file
it takes a shared (F_RDLCK) open-file-description lock on one byte per bit:
byte 100 + bit for "I use it", byte 200 + bit for "I do not share it".  Before
it uses a permission it tests byte 200 + bit (does anyone refuse to share it?),
and before it refuses to share one it tests byte 100 + bit (does anyone use it?).
The kernel drops the locks when the file description is closed.

``FileLock`` holds the lock bytes of one file description and changes them as
QEMU does (take the new bytes, check, then give up the ones no longer needed;
on a conflict nothing changes).  The roles below are what QEMU 7.2 takes for the
same role, read from /proc/locks while ``qemu-system-x86_64 -drive`` held a chain.
"""
import errno
import fcntl
import functools
import os
import struct
from typing import NamedTuple, Optional

from .errors import ImageLockError

BLK_PERM_CONSISTENT_READ = 0x01
BLK_PERM_WRITE = 0x02
BLK_PERM_WRITE_UNCHANGED = 0x04
BLK_PERM_RESIZE = 0x08
BLK_PERM_ALL = 0x0F
PERM_NAMES = ("consistent read", "write", "write unchanged", "resize")   # bdrv_perm_names

RAW_LOCK_PERM_BASE = 100      # libvirt takes byte 0; QEMU starts higher
RAW_LOCK_SHARED_BASE = 200

# Linux's open file description locks (fcntl.h); Python names them from 3.9 on.
F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
# struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid (OFD locks want 0).
_FLOCK = struct.Struct("hhqqi4x")


class Permissions(NamedTuple):
    """What an opener uses (``perm``) and what it lets others use (``shared``)."""
    perm: int
    shared: int

    def union(self, other: "Permissions") -> "Permissions":
        """Both openers' needs at once (QEMU sums a node's parents this way)."""
        return Permissions(self.perm | other.perm, self.shared & other.shared)


_CR, _W = BLK_PERM_CONSISTENT_READ, BLK_PERM_WRITE
_WU, _RESIZE = BLK_PERM_WRITE_UNCHANGED, BLK_PERM_RESIZE

NOTHING = Permissions(0, BLK_PERM_ALL)
# A backing image or a readonly=on drive: bytes 100, 201, 203.
READ_ONLY = Permissions(_CR, _CR | _WU)
# A drive's active image opened for writing: bytes 100, 101, 103, 201, 203.
READ_WRITE = Permissions(_CR | _W | _RESIZE, _CR | _WU)
# What a stream holds on the image it copies into, for the whole job (the
# copy-on-read filter adds "write unchanged"): bytes 100-103, 201, 203.
JOB_WRITER = Permissions(BLK_PERM_ALL, _CR | _WU)
# raw_co_create: locked (and checked) before the file is truncated.
CREATE = Permissions(_W | _RESIZE, BLK_PERM_ALL & ~_RESIZE)


def _flock(fd: int, command: int, lock_type: int, offset: int) -> int:
    """fcntl with a one-byte struct flock; returns the l_type the kernel wrote back."""
    request = _FLOCK.pack(lock_type, os.SEEK_SET, offset, 1, 0)
    answer = fcntl.fcntl(fd, command, request)
    return _FLOCK.unpack(answer)[0]


@functools.lru_cache(maxsize=None)
def ofd_locks_available() -> bool:
    """QEMU's qemu_has_ofd_lock: without OFD locks, locking=auto means no locks."""
    try:
        fd = os.open("/dev/null", os.O_RDONLY)
    except OSError:
        return False
    try:
        _flock(fd, F_OFD_GETLK, fcntl.F_WRLCK, 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _bits(mask: int):
    return [bit for bit in range(len(PERM_NAMES)) if mask & (1 << bit)]


class FileLock:
    """The lock bytes one open file description holds for one opener.

    ``filename`` is the name QEMU would print in its hint (the file as the user
    named it).  A disabled lock (``file.locking=off``) takes nothing and never
    refuses.
    """

    def __init__(self, fd: int, filename: str, enabled: bool = True):
        self.fd = fd
        self.filename = filename
        self.enabled = enabled
        self.permissions = NOTHING
        self._held_perm = 0         # bits whose byte 100 + bit this fd holds
        self._held_unshared = 0     # bits whose byte 200 + bit this fd holds

    def change(self, wanted: Permissions) -> None:
        """Hold ``wanted`` instead of the current permissions; ImageLockError (and
        nothing changed) when another opener's locks conflict."""
        if not self.enabled:
            self.permissions = wanted
            return
        old = self.permissions
        if wanted.perm | old.perm == old.perm and wanted.shared & old.shared == old.shared:
            self._settle(wanted)        # only gives bytes back: cannot conflict
            return
        try:
            self._take(wanted.perm | old.perm, ~old.shared | ~wanted.shared)
            self._check(wanted)
        except ImageLockError:
            self._settle(old)
            raise
        self._settle(wanted)

    def copy_to(self, fd: int) -> "FileLock":
        """The same permissions taken on a second description of the file (a reopen):
        QEMU copies the locks before it closes the old descriptor, so there is never
        a moment without them."""
        twin = FileLock(fd, self.filename, self.enabled)
        if self.enabled:
            twin._take(self.permissions.perm, ~self.permissions.shared)
        twin.permissions = self.permissions
        return twin

    def release(self) -> None:
        """Give every byte back (closing the descriptor does the same)."""
        if self.enabled:
            self._settle(NOTHING)

    # -- the bytes -----------------------------------------------------------
    def _take(self, perm: int, unshared: int) -> None:
        for bit in _bits(perm & ~self._held_perm):
            self._lock(RAW_LOCK_PERM_BASE + bit)
            self._held_perm |= 1 << bit
        for bit in _bits(unshared & ~self._held_unshared):
            self._lock(RAW_LOCK_SHARED_BASE + bit)
            self._held_unshared |= 1 << bit

    def _settle(self, wanted: Permissions) -> None:
        """Hold exactly the bytes of ``wanted`` (taking any missing, giving back the rest)."""
        self._take(wanted.perm, ~wanted.shared)
        for bit in _bits(self._held_perm & ~wanted.perm):
            self._unlock(RAW_LOCK_PERM_BASE + bit)
            self._held_perm &= ~(1 << bit)
        for bit in _bits(self._held_unshared & wanted.shared):
            self._unlock(RAW_LOCK_SHARED_BASE + bit)
            self._held_unshared &= ~(1 << bit)
        self.permissions = wanted

    def _check(self, wanted: Permissions) -> None:
        """raw_check_lock_bytes: the first conflict in QEMU's order names the permission."""
        for bit in _bits(wanted.perm):
            self._test(RAW_LOCK_SHARED_BASE + bit, 'Failed to get "%s" lock' % PERM_NAMES[bit])
        for bit in _bits(~wanted.shared):
            self._test(RAW_LOCK_PERM_BASE + bit,
                       'Failed to get shared "%s" lock' % PERM_NAMES[bit])

    def _test(self, offset: int, text: str) -> None:
        """qemu_lock_fd_test: would an exclusive lock on the byte conflict with anyone's?"""
        try:
            found = _flock(self.fd, F_OFD_GETLK, fcntl.F_WRLCK, offset)
        except OSError as err:
            raise self._error(text, err.errno) from err
        if found != fcntl.F_UNLCK:
            raise self._error(text)

    def _lock(self, offset: int) -> None:
        try:
            _flock(self.fd, F_OFD_SETLK, fcntl.F_RDLCK, offset)
        except OSError as err:
            raise self._error("Failed to lock byte %d" % offset, err.errno) from err

    def _unlock(self, offset: int) -> None:
        try:
            _flock(self.fd, F_OFD_SETLK, fcntl.F_UNLCK, offset)
        except OSError:
            pass        # QEMU only warns: unlocking cannot conflict, the fd closes anyway

    def _error(self, text: str, error: Optional[int] = None) -> ImageLockError:
        # raw_lock_error_setg_errno: EAGAIN/EACCES mean "someone holds it", said without errno
        if error not in (None, errno.EAGAIN, errno.EACCES):
            text = "%s: %s" % (text, os.strerror(error))
        return ImageLockError(text, self.filename)


def lock_file(fd: int, filename: str, wanted: Permissions, enabled: bool = True) -> FileLock:
    """A FileLock holding ``wanted`` on ``fd``; raises ImageLockError on a conflict."""
    lock = FileLock(fd, filename, enabled and ofd_locks_available())
    lock.change(wanted)
    return lock
