"""The guest's path to a node: what a device (qemu-io, an NBD client) does to its disk.

``GuestView(image)`` stands for the image in guest requests.  Reads, block status and
everything else pass through; before a write, a zero write or a discard, the node's
``before_guest_write`` notifiers run (a backup job copies the old data out: QEMU's
copy-before-write filter), then the node's recording dirty bitmaps are marked (QEMU's
bdrv_co_write_req_finish -> bdrv_set_dirty).
Marking before the write means a bit is never missing for data that reached the disk.
After the write, the node's ``after_guest_write`` notifiers run as
``f(kind, offset, length, data)`` (kind 'write', 'zero' or 'discard'; data only for
'write'), with the image's lock held from before the write: a mirror job that
plans its copy under the same lock can never miss a write (the write either lands
before the plan or is reported after it), and in write-blocking mode sends the
bytes on to its target.  They run even when the write failed part way.
Jobs write to images directly, so their copies (a stream's, which leave the guest's
view unchanged) mark nothing.
"""


class GuestView:
    """An image as the guest sees it: writes are recorded in its dirty bitmaps."""

    def __init__(self, image):
        self.image = image

    def __getattr__(self, name):
        return getattr(self.image, name)

    def _before_write(self, offset: int, length: int) -> None:
        for notify in list(self.image.before_guest_write):
            notify(offset, length)
        self.image.dirty_bitmaps.mark(offset, length)

    def _after_write(self, call, kind, offset, length, data=None):
        with self.image.lock:
            try:
                call()
            finally:
                for notify in list(self.image.after_guest_write):
                    notify(kind, offset, length, data)

    def write(self, offset: int, data) -> None:
        length = len(memoryview(data).cast("B"))
        self._before_write(offset, length)
        if not self.image.after_guest_write:
            self.image.write(offset, data)
            return
        self._after_write(lambda: self.image.write(offset, data), "write", offset, length,
                          bytes(data))

    def write_zeroes(self, offset: int, length: int) -> None:
        self._before_write(offset, length)
        self._after_write(lambda: self.image.write_zeroes(offset, length), "zero", offset, length)

    def discard(self, offset: int, length: int) -> None:
        self._before_write(offset, length)
        self._after_write(lambda: self.image.discard(offset, length), "discard", offset, length)
