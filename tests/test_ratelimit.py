"""The rate limiter (QEMU ratelimit.h) driven by a fake clock: no sleeping."""
import pytest
from hypothesis import given, settings, strategies as st

from images.jobs.ratelimit import RateLimiter

KiB = 1024
MiB = 1024 * KiB


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def transfer(limiter, clock, chunk, duration):
    """A job loop as block_job_ratelimit_sleep drives it: returns bytes sent in ``duration``."""
    end = clock.now + duration
    sent = 0
    while True:
        delay = limiter.delay()
        if delay > 0:
            clock.advance(delay)
            continue
        if clock.now >= end:
            return sent
        limiter.account(chunk)
        sent += chunk


@pytest.mark.parametrize("speed, quota", [
    (0, 0), (1, 1), (9, 1), (10, 1), (15, 1), (30, 3), (70, 7), (1000, 100),
    (4 * MiB, 419430), (10 * MiB, 1048576),
])
def test_quota_is_qemus_truncated_speed_times_slice(speed, quota):
    assert RateLimiter(speed).quota == quota


def test_unlimited_never_delays():
    clock = FakeClock()
    limiter = RateLimiter(0, clock=clock)
    limiter.account(10 * 1024 * MiB)
    assert limiter.delay() == 0


def test_delay_starts_when_the_slice_quota_is_used_up():
    clock = FakeClock()
    limiter = RateLimiter(1000, clock=clock)      # quota 100 bytes per 0.1 s
    limiter.account(99)
    assert limiter.delay() == 0
    limiter.account(1)                            # 100 bytes: quota reached
    assert limiter.delay() == pytest.approx(0.1)
    clock.advance(0.04)
    assert limiter.delay() == pytest.approx(0.06)


def test_excess_stretches_the_slice():
    clock = FakeClock()
    limiter = RateLimiter(1000, clock=clock)
    limiter.account(350)                          # 3.5 slices' worth
    assert limiter.delay() == pytest.approx(0.35)


def test_a_new_slice_starts_after_the_old_one_ended():
    clock = FakeClock()
    limiter = RateLimiter(1000, clock=clock)
    limiter.account(100)
    clock.advance(0.1001)
    assert limiter.delay() == 0
    limiter.account(99)
    assert limiter.delay() == 0


@pytest.mark.parametrize("speed, chunk", [
    (1 * MiB, 64 * KiB), (4 * MiB, 512 * KiB), (10 * MiB, 64 * KiB), (100 * KiB, 512 * KiB),
    (1000, 1),
])
def test_throughput_equals_speed_over_many_slices(speed, chunk):
    clock = FakeClock()
    limiter = RateLimiter(speed, clock=clock)
    duration = max(20.0, 200.0 * chunk / speed)   # hundreds of slices and of chunks
    sent = transfer(limiter, clock, chunk, duration)
    assert sent / duration == pytest.approx(speed, rel=0.02)


@settings(max_examples=60, deadline=None)
@given(speed=st.integers(1000, 64 * MiB), chunk_per_mille=st.integers(2, 2000))
def test_throughput_property(speed, chunk_per_mille):
    chunk = max(1, speed * chunk_per_mille // 1000)   # 1/500 s to 2 s worth of bytes
    clock = FakeClock()
    limiter = RateLimiter(speed, clock=clock)
    duration = 20.0 * max(1.0, chunk / speed)
    sent = transfer(limiter, clock, chunk, duration)
    # At most one chunk and one slice quota off the ideal, plus what QEMU's integer
    # quota (speed * 100 ms, truncated) gives up: under one byte per slice.
    truncation = duration / limiter.SLICE
    assert abs(sent - speed * duration) <= chunk + limiter.quota + 1 + truncation


def test_set_speed_zero_lifts_a_pending_delay_at_once():
    clock = FakeClock()
    limiter = RateLimiter(1 * KiB, clock=clock)
    limiter.account(1 * MiB)
    assert limiter.delay() == pytest.approx(1024 - 0, rel=0.01)
    limiter.set_speed(0)
    assert limiter.delay() == 0


def test_raising_the_speed_shortens_a_pending_delay_at_once():
    clock = FakeClock()
    limiter = RateLimiter(1 * KiB, clock=clock)
    limiter.account(1 * MiB)
    assert limiter.delay() > 1000
    limiter.set_speed(10 * MiB)
    assert limiter.delay() == pytest.approx(0.1, rel=0.01)
    limiter.set_speed(100 * MiB)      # the stretched slice now ends in the past: no delay
    assert limiter.delay() == 0


def test_lowering_the_speed_lengthens_the_delay_at_once():
    clock = FakeClock()
    limiter = RateLimiter(1 * MiB, clock=clock)
    limiter.account(1 * MiB)
    assert limiter.delay() == pytest.approx(1.0, rel=0.01)
    limiter.set_speed(512 * KiB)
    assert limiter.delay() == pytest.approx(2.0, rel=0.01)


def test_throughput_follows_a_speed_change():
    clock = FakeClock()
    limiter = RateLimiter(1 * MiB, clock=clock)
    first = transfer(limiter, clock, 64 * KiB, 50.0)
    limiter.set_speed(4 * MiB)
    second = transfer(limiter, clock, 64 * KiB, 50.0)
    assert first / 50.0 == pytest.approx(1 * MiB, rel=0.02)
    assert second / 50.0 == pytest.approx(4 * MiB, rel=0.02)


def test_negative_speed_is_refused_and_changes_nothing():
    limiter = RateLimiter(1000)
    with pytest.raises(ValueError, match="non-negative"):
        limiter.set_speed(-1)
    assert (limiter.speed, limiter.quota) == (1000, 100)
