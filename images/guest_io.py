"""The guest's path to a node: what a device (qemu-io, an NBD client) does to its disk.

``GuestView(image)`` stands for the image in guest requests.  Reads, block status and
everything else pass through; before a write, a zero write or a discard, the node's
``before_guest_write`` notifiers run (a backup job copies the old data out: QEMU's
copy-before-write filter), then the node's recording dirty bitmaps are marked (QEMU's
bdrv_co_write_req_finish -> bdrv_set_dirty).
Marking before the write means a bit is never missing for data that reached the disk.
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

    def write(self, offset: int, data) -> None:
        self._before_write(offset, len(memoryview(data).cast("B")))
        self.image.write(offset, data)

    def write_zeroes(self, offset: int, length: int) -> None:
        self._before_write(offset, length)
        self.image.write_zeroes(offset, length)

    def discard(self, offset: int, length: int) -> None:
        self._before_write(offset, length)
        self.image.discard(offset, length)
