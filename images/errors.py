"""The error tree of the block layer.

    BlockError                 anything the block layer refuses or fails to do
     +-- ImageError            a malformed, unsupported or unusable image file
     |    +-- ChainError       a backing chain that cannot be opened (loop, missing, too deep)
     |    +-- ImageLockError   another process holds the image (QEMU's lock bytes)
     +-- ImageIOError          an I/O error while reading or writing an image (carries errno)
     |    +-- ImageCorruptError  metadata found impossible while reading (also an ImageError):
     |                         EIO, as QEMU's qcow2_signal_corruption, so job policies apply
     +-- JobError              a job verb that the job's state does not allow, or a bad job id

Every error carries ``desc``, the one-line message shown to the user (QEMU's text
where QEMU has one), plus structured fields naming what went wrong. Mapping to QMP
error classes happens in exactly one place, ``commands/errors.py``.  A few errors
also carry ``hint``, QEMU's second line (``error_append_hint``): the console and
the command line print it under ``desc``; QMP, like QEMU, sends only ``desc``.
``os_error_text`` is the strerror text that messages about a failed OS call quote.
"""
import errno as _errno
import os


class BlockError(Exception):
    """Base class: ``desc`` is the one-line, user-facing message."""

    hint = None     # QEMU's second line, printed by the console only

    def __init__(self, desc: str):
        super().__init__(desc)
        self.desc = desc


class ImageError(BlockError):
    """A malformed or unsupported image. ``path`` names the file, ``value`` the offending value."""

    def __init__(self, desc: str, path: str = None, value=None):
        super().__init__(desc)
        self.path = path
        self.value = value


class ChainError(ImageError):
    """A backing chain that cannot be opened; ``chain`` lists the file names walked so far."""

    def __init__(self, desc: str, chain=(), path: str = None):
        super().__init__(desc, path=path)
        self.chain = list(chain)


class ImageLockError(ImageError):
    """Another opener's lock bytes conflict with the permissions asked for; ``path``
    is the file as named, and the hint asks QEMU's question about it."""

    def __init__(self, desc: str, path: str):
        super().__init__(desc, path=path)
        self.hint = "Is another process using the image [%s]?" % path


class ImageIOError(BlockError):
    """An I/O error on an image; ``errno`` is the OS error number (EIO, ENOSPC, ...)."""

    def __init__(self, desc: str = None, errno: int = _errno.EIO, operation: str = "read"):
        super().__init__(desc or os.strerror(errno))
        self.errno = errno
        self.operation = operation


class ImageCorruptError(ImageError, ImageIOError):
    """Metadata that points somewhere impossible, met while reading (an unaligned L2 entry,
    an undecodable compressed cluster).  QEMU turns it into EIO for the request, so it is
    an I/O error (errno EIO) to the job's on-error policy, and an ImageError by nature."""

    def __init__(self, desc: str, path: str = None, value=None):
        BlockError.__init__(self, desc)
        self.path = path
        self.value = value
        self.errno = _errno.EIO
        self.operation = "read"


class JobError(BlockError):
    """A job verb refused, or a job that cannot be found (``not_found`` is then true)."""

    def __init__(self, desc: str, not_found: bool = False):
        super().__init__(desc)
        self.not_found = not_found


def os_error_text(err: OSError) -> str:
    """strerror of an OSError's errno (EIO when the error carries none)."""
    return os.strerror(err.errno or _errno.EIO)
