"""The block-job rate limiter: QEMU's include/qemu/ratelimit.h with an injectable clock.

Time is divided into slices of ``SLICE`` seconds (QEMU's BLOCK_JOB_SLICE_TIME,
100 ms).  Each slice may carry ``quota = max(speed * SLICE, 1)`` bytes.  Bytes are
charged with ``account``; once a slice's quota is used up, the slice is stretched
to ``dispatched / quota`` slices and ``delay`` says how long to sleep until its
end.  Speed 0 disables throttling.

The limiter is pure: it never sleeps and holds no lock.  Its owner (a Job)
serializes calls and does the sleeping.
"""
import time

# QEMU keeps slices in integer nanoseconds; we do the quota arithmetic in integers
# too so that quota(speed) is exactly QEMU's truncated value.
_NS_PER_SECOND = 1_000_000_000


class RateLimiter:
    """Bytes-per-second throttle in fixed time slices (ratelimit_calculate_delay)."""

    SLICE = 0.1

    def __init__(self, speed=0, clock=time.monotonic):
        self._clock = clock
        self.slice_start = 0.0
        self.slice_end = 0.0          # 0: the first call starts a fresh slice
        self.dispatched = 0
        self.quota = 0
        self.speed = 0
        self.set_speed(speed)

    def set_speed(self, speed):
        """Bytes per second, 0 = unlimited (ratelimit_set_speed); takes effect on the next call."""
        if speed < 0:
            raise ValueError("speed must be non-negative, got %r" % (speed,))
        self.speed = speed
        if speed == 0:
            self.quota = 0
        else:
            slice_ns = int(round(self.SLICE * _NS_PER_SECOND))
            self.quota = max((speed * slice_ns) // _NS_PER_SECOND, 1)

    def account(self, nbytes):
        """Charge ``nbytes`` to the current slice (QEMU's calculate_delay(limit, n))."""
        self._calculate_delay(nbytes)

    def delay(self) -> float:
        """Seconds to sleep before dispatching more (0 if none): calculate_delay(limit, 0)."""
        return self._calculate_delay(0)

    def _calculate_delay(self, nbytes) -> float:
        if not self.quota:
            return 0.0
        now = self._clock()
        if self.slice_end < now:
            # The previous (possibly stretched) slice is over: start accounting afresh.
            self.slice_start = now
            self.slice_end = now + self.SLICE
            self.dispatched = 0
        self.dispatched += nbytes
        if self.dispatched < self.quota:
            return 0.0
        # Quota used up: stretch the slice over the excess, sleep until its end.
        delay_slices = self.dispatched / self.quota
        self.slice_end = self.slice_start + delay_slices * self.SLICE
        # A raised speed can shrink the stretched slice below now; QEMU then sleeps 0.
        return max(self.slice_end - now, 0.0)
