"""Guest write latency through a device, idle and while a full-speed stream runs.

Run as ``python -m bench.latency D.qcow2 [WARM_GIB]``; prints ``idle_p50=.. idle_p99=.. stream_p50=..
stream_p99=.. stream_writes=..`` in seconds.  The writes go to random 4 KiB-aligned
offsets through the device's active image, as a guest's would.
"""
import random
import sys
import time

from commands.core import BlockCore

from .peers import touch_ram

WRITE = b"\x5a" * 4096


def percentile(samples, fraction):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def timed_writes(device, rng, count=None, while_true=None):
    samples = []
    blocks = device.virtual_size // 4096
    while (count is not None and len(samples) < count) or (while_true is not None and while_true()):
        offset = rng.randrange(blocks) * 4096
        start = time.perf_counter()
        device.write(offset, WRITE)
        samples.append(time.perf_counter() - start)
        time.sleep(0.001)  # a guest issuing writes, not a tight loop hogging the lock
    return samples


def main(path, warm_gib=None):
    core = BlockCore()
    core.add_drive("virtio0", path)
    device = core.active_image("virtio0")
    rng = random.Random(1)
    idle = timed_writes(device, rng, count=500)
    if warm_gib:
        touch_ram(warm_gib)
    core.execute("block-stream", {"device": "virtio0"})
    during = timed_writes(device, rng, while_true=lambda: bool(core.jobs()))
    core.wait_jobs()
    core.shutdown()
    print("idle_p50=%f idle_p99=%f stream_p50=%f stream_p99=%f stream_writes=%d" % (
        percentile(idle, 0.5), percentile(idle, 0.99),
        percentile(during or [0], 0.5), percentile(during or [0], 0.99), len(during)))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else None)
