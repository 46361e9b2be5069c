"""Warm memory before a timed operation: write to GIB GiB of anonymous memory once, then free it.

    python -m bench.touch_ram GIB

These VMs hand memory that has been idle for a couple of seconds back to the host
(free page reporting); the first write to such a page faults into the host, and
fresh page-cache writes then run at about 400 MiB/s instead of several GiB/s.
Touching and unmapping memory right before an operation leaves recently used pages
for the kernel to allocate from, so blockmon and its peers start equally warm.
"""
import mmap
import sys

CHUNK = 64 << 20


def touch_ram(gib):
    """Dirty ``gib`` GiB of fresh anonymous memory, then give it back (munmap)."""
    size = int(float(gib) * (1 << 30)) // CHUNK * CHUNK
    if size <= 0:
        return
    block = b"\x01" * CHUNK
    with mmap.mmap(-1, size) as memory:
        for offset in range(0, size, CHUNK):
            memory[offset:offset + CHUNK] = block


if __name__ == "__main__":
    touch_ram(sys.argv[1])
