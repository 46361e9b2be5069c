"""Shared helpers for the job-engine tests: a recording subscriber, a chunk-copying job, fixtures.

``ChunkJob`` walks N chunks, optionally stopping at a semaphore ``gate`` before each
chunk so a test can hold it at a known point.  ``Recorder`` merges published events
and hook calls into one ``trace`` list.  Waits are generous (they only bound a hang)
and nothing asserts on wall-clock time.
"""
import threading
import time

import pytest

from images.errors import ImageIOError
from images.events import EventBus
from images.jobs.blockjob import BlockJob
from images.jobs.registry import JobRegistry
from images.jobs.states import VERBS

WAIT = 60.0     # seconds: only a guard against hanging, never a performance limit
CHUNK = 65536
SUCCESS = ["created", "running", "waiting", "pending", "prepare()", "clean()",
           "BLOCK_JOB_COMPLETED", "concluded", "null"]


class Recorder:
    def __init__(self, bus):
        self.cond = threading.Condition()
        self.trace = []
        self.events = []
        bus.subscribe(self._on_event)

    def _on_event(self, event):
        name = event["event"]
        self.note(event["data"]["status"] if name == "JOB_STATUS_CHANGE" else name, event)

    def note(self, item, event=None):
        with self.cond:
            self.trace.append(item)
            if event is not None:
                self.events.append(event)
            self.cond.notify_all()

    def wait_for(self, item, count=1):
        with self.cond:
            ok = self.cond.wait_for(lambda: self.trace.count(item) >= count, WAIT)
            assert ok, "no %r (x%d) in %r" % (item, count, self.trace)

    def data(self, name):
        with self.cond:
            return [event["data"] for event in self.events if event["event"] == name]


class ChunkJob(BlockJob):
    """Copies ``chunks`` chunks; ``faults`` maps a chunk index to exceptions raised in turn."""

    job_type = "stream"     # the events the tests expect name a stream job

    def __init__(self, job_id, bus, recorder, *, chunks=4, gate=None, faults=None,
                 skip=(), prepare_error=None, clean_error=None, **kw):
        super().__init__(job_id, bus, **kw)
        self.recorder = recorder
        self.chunks = chunks
        self.gate = gate
        self.faults = {index: list(excs) for index, excs in (faults or {}).items()}
        self.skip = set(skip)
        self.prepare_error = prepare_error
        self.clean_error = clean_error
        self.attempts = []

    def run(self):
        self.set_len(self.chunks * CHUNK)
        index = 0
        while index < self.chunks:
            if self.gate is not None:
                self.gate.acquire()
            if not self.checkpoint():
                return
            self.attempts.append(index)
            try:
                if self.faults.get(index):
                    raise self.faults[index].pop(0)
            except ImageIOError as exc:
                action = self.error_action(exc)
                if action == "retry":
                    continue
                if action == "report":
                    raise
            else:
                if index not in self.skip:
                    self.account_copied(CHUNK)
            self.progress(CHUNK)
            index += 1

    def prepare(self):
        self.recorder.note("prepare()")
        if self.prepare_error is not None:
            raise self.prepare_error

    def abort(self):
        self.recorder.note("abort()")

    def clean(self):
        self.recorder.note("clean()")
        if self.clean_error is not None:
            raise self.clean_error


@pytest.fixture
def bus():
    return EventBus()


@pytest.fixture
def rec(bus):
    return Recorder(bus)


@pytest.fixture
def registry():
    return JobRegistry()


@pytest.fixture
def make(bus, rec, registry):
    """make(**kw) -> a ChunkJob 'virtio0' added to the registry (not started).

    Teardown cancels whatever a test left running, so no thread stays parked.
    """
    made = []

    def factory(job_id="virtio0", **kw):
        job = ChunkJob(job_id, bus, rec, **kw)
        registry.add(job)
        made.append(job)
        return job
    yield factory
    for job in made:
        if job.status in VERBS["cancel"]:
            job.cancel(force=True)
        if job.gate is not None:
            job.gate.release(job.chunks + 1)


def run_to_end(job):
    job.start()
    assert job.wait(WAIT)


def completed(length, offset=None, speed=0, **extra):
    data = {"type": "stream", "device": "virtio0", "len": length,
            "offset": length if offset is None else offset, "speed": speed}
    data.update(extra)
    return data


def wait_until(predicate):
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


def job_in_state(make, rec, state):
    if state == "created":
        return make()
    if state in ("running", "paused"):
        job = make(gate=threading.Semaphore(0))
        job.start()
        wait_until(lambda: job.len > 0)       # the body is parked at its gate
        if state == "paused":
            job.pause()
            job.gate.release()
            rec.wait_for("paused")
        return job
    job = make(chunks=1, auto_finalize=state != "pending", auto_dismiss=state != "concluded")
    job.start()
    rec.wait_for("BLOCK_JOB_PENDING" if state == "pending" else "concluded")
    return job


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds
