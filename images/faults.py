"""A fault-injecting wrapper around any image: the role QEMU's blkdebug plays in tests.

``FaultInjectingImage(inner)`` behaves exactly like ``inner`` (attribute reads and
writes go through to it, and it shares inner's lock) until a rule says otherwise:
``inject("read", offset, length, errno=EIO)`` makes every read touching that range
raise ``ImageIOError``; writes, zero writes and discards are "write" operations.
"""
import errno as _errno
import threading
from typing import List, NamedTuple, Optional

from images.driver import BlockImage
from images.errors import ImageIOError

OPERATIONS = ("read", "write")
_OWN = ("_inner", "_rules", "_rules_lock")


class FaultRule(NamedTuple):
    operation: str
    offset: int
    length: Optional[int]        # None: to the end of the image
    errno: int
    once: bool

    def touches(self, operation: str, offset: int, length: int) -> bool:
        if operation != self.operation:
            return False
        end = None if self.length is None else self.offset + self.length
        # An empty request touches a rule only when it sits inside the rule's range.
        request_end = offset + max(length, 1)
        return request_end > self.offset and (end is None or offset < end)


class FaultInjectingImage(BlockImage):
    """Delegates everything to ``inner``; raises the injected errors first."""

    def __init__(self, inner: BlockImage):  # pylint: disable=super-init-not-called
        # BlockImage.__init__ is skipped on purpose: its attributes live on ``inner``.
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_rules", [])
        object.__setattr__(self, "_rules_lock", threading.Lock())

    # -- delegation ------------------------------------------------------------
    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):
        if name in _OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self._inner, name, value)

    @property
    def format_name(self):        # BlockImage defines it on the class, so forward it by hand
        return self._inner.format_name

    @property
    def inner(self) -> BlockImage:
        return self._inner

    # -- rules -----------------------------------------------------------------
    def inject(self, operation: str, offset: int = 0, length: Optional[int] = None,
               errno: int = _errno.EIO, once: bool = False) -> None:
        """From now on, ``operation`` requests touching [offset, offset+length) fail."""
        if operation not in OPERATIONS:
            raise ValueError("Unknown operation %r: expected one of %s"
                             % (operation, ", ".join(OPERATIONS)))
        if offset < 0 or (length is not None and length <= 0):
            raise ValueError("Invalid fault range: offset %d length %r" % (offset, length))
        with self._rules_lock:
            self._rules.append(FaultRule(operation, offset, length, errno, once))

    def clear(self) -> None:
        """Remove every rule: the image behaves like ``inner`` again."""
        with self._rules_lock:
            self._rules.clear()

    @property
    def rules(self) -> List[FaultRule]:
        with self._rules_lock:
            return list(self._rules)

    def _check(self, operation: str, offset: int, length: int) -> None:
        with self._rules_lock:
            for rule in self._rules:
                if rule.touches(operation, offset, length):
                    if rule.once:
                        self._rules.remove(rule)
                    raise ImageIOError(errno=rule.errno, operation=operation)

    # -- the BlockImage interface -----------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        with self._inner.lock:
            self._check("read", offset, length)
            return self._inner.read(offset, length)

    def block_status(self, offset: int, length: int):
        return self._inner.block_status(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        with self._inner.lock:
            self._check("write", offset, len(data))
            self._inner.write(offset, data)

    def write_zeroes(self, offset: int, length: int) -> None:
        with self._inner.lock:
            self._check("write", offset, length)
            self._inner.write_zeroes(offset, length)

    def discard(self, offset: int, length: int) -> None:
        with self._inner.lock:
            self._check("write", offset, length)
            self._inner.discard(offset, length)

    def flush(self) -> None:
        self._inner.flush()

    def set_backing_reference(self, name, fmt) -> None:
        self._inner.set_backing_reference(name, fmt)

    def set_read_only(self, read_only: bool) -> None:
        self._inner.set_read_only(read_only)

    def claim_permissions(self, owner, permissions) -> None:
        self._inner.claim_permissions(owner, permissions)

    def release_permissions(self, owner) -> None:
        self._inner.release_permissions(owner)

    def close(self) -> None:
        self._inner.close()

    def info(self) -> dict:
        return self._inner.info()

    def __repr__(self):
        return "<FaultInjectingImage %r>" % (self._inner,)
