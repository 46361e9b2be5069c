"""The guest's write path to an image, with write notifiers (QEMU's before/after-write hooks).

A job that must see every guest write (the mirror: dirty tracking, or write-through
to its target) registers a notifier on the device; every guest path (qemu-io in
the monitor, an NBD export) writes through ``NotifyingImage`` instead of the bare
image.  A notifier is called as ``notifier(kind, offset, length, data)`` with
``kind`` one of 'write', 'zero', 'discard' (``data`` is the bytes for 'write',
else None), *after* the image changed and while the image's lock is still held:
a job that holds the same lock while it reads a range and copies it can never
miss a write (the write is either before its read, or notified after it).
A notifier is called even when the write failed part way, since part of it may
have landed.
"""


class NotifyingImage:
    """A BlockImage whose write, write_zeroes and discard report to ``notifiers``.

    Everything else (read, block_status, virtual_size, ...) is the image's own.
    """

    def __init__(self, image, notifiers):
        self._image = image
        self._notifiers = tuple(notifiers)

    @property
    def image(self):
        return self._image

    def write(self, offset, data):
        with self._image.lock:
            try:
                self._image.write(offset, data)
            finally:
                self._notify("write", offset, len(data), bytes(data))

    def write_zeroes(self, offset, length):
        with self._image.lock:
            try:
                self._image.write_zeroes(offset, length)
            finally:
                self._notify("zero", offset, length, None)

    def discard(self, offset, length):
        with self._image.lock:
            try:
                self._image.discard(offset, length)
            finally:
                self._notify("discard", offset, length, None)

    def _notify(self, kind, offset, length, data):
        for notifier in self._notifiers:
            notifier(kind, offset, length, data)

    def __getattr__(self, name):
        return getattr(self._image, name)

    def __repr__(self):
        return "<NotifyingImage %r>" % (self._image,)
