"""The guest's path to a node: what a device (qemu-io, an NBD client) does to its disk.

``GuestView(image)`` stands for the image in guest requests.  Reads, block status and
everything else pass through; a write, a zero write and a discard first mark the
node's recording dirty bitmaps (QEMU's bdrv_co_write_req_finish -> bdrv_set_dirty).
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

    def write(self, offset: int, data) -> None:
        self.image.dirty_bitmaps.mark(offset, len(memoryview(data).cast("B")))
        self.image.write(offset, data)

    def write_zeroes(self, offset: int, length: int) -> None:
        self.image.dirty_bitmaps.mark(offset, length)
        self.image.write_zeroes(offset, length)

    def discard(self, offset: int, length: int) -> None:
        self.image.dirty_bitmaps.mark(offset, length)
        self.image.discard(offset, length)
