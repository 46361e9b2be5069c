"""The raw format: a plain file whose bytes are the guest's bytes.

A raw image is allocated everywhere (it has no backing file), so its block status
is only DATA or ZERO; holes are found with SEEK_DATA/SEEK_HOLE, the way QEMU's
file-posix driver finds them.  Zero writes and discards punch holes when the file
system allows it and write zeros otherwise.
"""
import ctypes
import ctypes.util
import errno
import os
import stat
from typing import List, Optional

from images.driver import DATA, ZERO, BlockImage, Run
from images.errors import ImageError, ImageIOError, os_error_text
from images.locking import CREATE, lock_file

FALLOC_FL_KEEP_SIZE = 0x01   # linux/falloc.h
FALLOC_FL_PUNCH_HOLE = 0x02
ZERO_CHUNK = 1 << 20         # bytes of zeros written at a time when holes cannot be punched


def _load_fallocate():
    """libc's fallocate(2), or None where ctypes cannot reach it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    function.restype = ctypes.c_int
    return function


_fallocate = _load_fallocate()


def _open_error(path: str, err: OSError) -> ImageError:
    return ImageError("Could not open '%s': %s" % (path, os_error_text(err)), path=path)


class RawImage(BlockImage):
    """One raw file; its virtual size is the file's size when it was opened."""

    format_name = "raw"

    def __init__(self, path: str, fd: int, read_only: bool):
        super().__init__(path, read_only)
        self._fd = fd
        self.virtual_size = os.lseek(fd, 0, os.SEEK_END)   # st_size is 0 for block devices

    @classmethod
    def open(cls, path: str, read_only: bool = False, locking: bool = True,
             filename: Optional[str] = None) -> "RawImage":
        """Open and lock ``path`` in the role of its mode; ``filename`` is the name the
        lock error's hint prints (default ``path``), ``locking=False`` is file.locking=off."""
        try:
            fd = os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
        except OSError as err:
            raise _open_error(path, err) from err
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):  # O_RDONLY opens a directory without complaint
                raise _open_error(path, IsADirectoryError(errno.EISDIR, "Is a directory"))
            image = cls(path, fd, read_only)
            image.file_lock = lock_file(fd, filename or path, image.wanted_permissions(), locking)
        except BaseException:
            os.close(fd)
            raise
        return image

    @property
    def fd(self) -> Optional[int]:
        """The open file descriptor (None once closed): its bytes are the guest's bytes."""
        return self._fd

    def data_fd(self) -> Optional[int]:
        return self._fd

    # -- helpers -----------------------------------------------------------
    def _check_open(self) -> None:
        if self._fd is None:
            raise ImageError("Image '%s' is closed" % self.path, path=self.path)

    def _check_range(self, offset: int, length: int, operation: str) -> None:
        self._check_open()
        if offset < 0 or length < 0 or offset + length > self.virtual_size:
            raise ImageError(
                "Cannot %s %d bytes at offset %d of '%s': image size is %d"
                % (operation, length, offset, self.path, self.virtual_size),
                path=self.path, value=offset)

    def _check_writable(self) -> None:
        if self.read_only:
            raise ImageIOError(errno=errno.EPERM, operation="write")

    # -- reads -------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        with self.lock:
            self._check_range(offset, length, "read")
            try:
                data = os.pread(self._fd, length, offset)
            except OSError as err:
                raise ImageIOError(errno=err.errno or errno.EIO, operation="read") from err
            # The file may have shrunk since it was opened: bytes past its end read as zero.
            return data + bytes(length - len(data))

    def block_status(self, offset: int, length: int) -> List[Run]:
        with self.lock:
            self._check_range(offset, length, "get the status of")
            runs: List[Run] = []
            position, end = offset, offset + length
            while position < end:
                kind, run_end = self._extent_at(position, end)
                runs.append(Run(kind, position, run_end - position,
                                host_offset=position if kind == DATA else None))
                position = run_end
            return runs

    def _extent_at(self, position: int, end: int):
        """(kind, end) of the data extent or hole starting at ``position``, clipped to ``end``."""
        try:
            data = os.lseek(self._fd, position, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:       # only a hole remains up to the end of the file
                return ZERO, end
            return DATA, end                   # no hole information: everything is data
        if data > position:
            return ZERO, min(data, end)
        try:
            hole = os.lseek(self._fd, position, os.SEEK_HOLE)
        except OSError:
            hole = end
        return DATA, min(max(hole, position + 1), end)

    # -- writes ------------------------------------------------------------
    def write(self, offset: int, data: bytes) -> None:
        with self.lock:
            self._check_range(offset, len(data), "write")
            self._check_writable()
            view = memoryview(data)
            try:
                while view:
                    written = os.pwrite(self._fd, view, offset)
                    view, offset = view[written:], offset + written
            except OSError as err:
                raise ImageIOError(errno=err.errno or errno.EIO, operation="write") from err

    def write_zeroes(self, offset: int, length: int) -> None:
        with self.lock:
            self._check_range(offset, length, "write zeroes to")
            self._check_writable()
            if length and not self._punch_hole(offset, length):
                self._write_zero_bytes(offset, length)

    def discard(self, offset: int, length: int) -> None:
        # A raw file cannot forget data without changing it, so discard zeroes the range.
        self.write_zeroes(offset, length)

    def _punch_hole(self, offset: int, length: int) -> bool:
        """True when the file system punched the hole (partial blocks are zeroed by the kernel)."""
        if _fallocate is None:
            return False
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        if _fallocate(self._fd, mode, offset, length) == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            return False
        raise ImageIOError(errno=err, operation="write")

    def _write_zero_bytes(self, offset: int, length: int) -> None:
        zeros = bytes(min(length, ZERO_CHUNK))
        end = offset + length
        while offset < end:
            chunk = min(end - offset, len(zeros))
            self.write(offset, zeros[:chunk])
            offset += chunk

    def flush(self) -> None:
        with self.lock:
            if self._fd is None or self.read_only:
                return
            try:
                os.fsync(self._fd)
            except OSError as err:
                raise ImageIOError(errno=err.errno or errno.EIO, operation="write") from err

    # -- metadata ------------------------------------------------------------
    def set_backing_reference(self, name: Optional[str], fmt: Optional[str]) -> None:
        """Raw has no header: removing a backing reference it never had is a no-op."""
        if name is None and fmt is None:
            return
        raise ImageError("Backing file not supported for file format 'raw'", path=self.path)

    def set_read_only(self, read_only: bool) -> None:
        with self.lock:
            self._check_open()
            if read_only == self.read_only:
                return
            try:
                fd = os.open(self.path, os.O_RDONLY if read_only else os.O_RDWR)
            except OSError as err:
                raise ImageError("Could not reopen '%s' %s: %s" % (
                    self.path, "read-only" if read_only else "read-write",
                    os_error_text(err)), path=self.path) from err
            try:
                new_lock = self._lock_reopened(fd, read_only)
                if read_only:
                    self.flush()
            except BaseException:
                os.close(fd)
                raise
            os.close(self._fd)
            self._fd, self.read_only, self.file_lock = fd, read_only, new_lock

    def close(self) -> None:
        with self.lock:
            if self._fd is None:
                return
            fd, self._fd, self.file_lock = self._fd, None, None
            os.close(fd)        # the kernel drops the lock bytes with the description

    def info(self) -> dict:
        with self.lock:
            actual = os.stat(self.path).st_blocks * 512 if os.path.exists(self.path) else 0
            return {"format": "raw", "filename": self.path, "virtual-size": self.virtual_size,
                    "actual-size": actual, "dirty-flag": False}


def create_raw(path: str, virtual_size: int, filename: Optional[str] = None) -> None:
    """Create (or truncate) ``path`` as a sparse raw image of ``virtual_size`` bytes;
    ImageLockError (naming ``filename``, default ``path``) if another process holds it."""
    if not isinstance(virtual_size, int) or virtual_size < 0:
        raise ImageError("Invalid image size for '%s': %r" % (path, virtual_size), path=path,
                         value=virtual_size)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ImageError("Could not create '%s': %s" % (path, os_error_text(err)),
                         path=path) from err
    try:
        # QEMU's raw_co_create: lock and check before the file loses a byte
        lock_file(fd, filename or path, CREATE)
        os.ftruncate(fd, 0)
        os.ftruncate(fd, virtual_size)
    except OSError as err:
        raise ImageError("Could not resize '%s' to %d bytes: %s" % (
            path, virtual_size, os_error_text(err)), path=path) from err
    finally:
        os.close(fd)
