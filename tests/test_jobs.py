"""The job engine: QEMU's event sequences, verb/state refusals, registry and rate-limit sleep.

Jobs here are ``ChunkJob``s: a body that walks N chunks, optionally stopping at a
semaphore ``gate`` before each chunk so a test can hold it at a known point.  The
``Recorder`` merges published events and hook calls into one ``trace`` list.
Waits are generous (they only bound a hang) and nothing asserts on wall-clock time.
"""
import errno
import threading
import time

import pytest

from images.errors import BlockError, ImageIOError, JobError
from images.events import EventBus
from images.job_states import STATES, TRANSITIONS, VERBS, error_action_for, id_wellformed
from images.jobs import Job, JobRegistry

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


class ChunkJob(Job):
    """Copies ``chunks`` chunks; ``faults`` maps a chunk index to exceptions raised in turn."""

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


# -- the tables ------------------------------------------------------------------

LETTERS = dict(zip("UCRPYSWDXEN", STATES))


def letters(text):
    return frozenset(LETTERS[ch] for ch in text.split())


def test_transition_table_is_qemus_jobstt():
    # Reference section 4.2, transcribed letter by letter.
    expected = {"undefined": "C", "created": "R X N", "running": "P Y W X", "paused": "R",
                "ready": "S W X", "standby": "Y", "waiting": "D X", "pending": "X E",
                "aborting": "X E", "concluded": "N", "null": ""}
    assert {state: frozenset(TRANSITIONS[state]) for state in STATES} == \
        {state: letters(text) for state, text in expected.items()}


def test_verb_table_is_qemus_jobverbtable():
    expected = {"cancel": "C R P Y S W D", "pause": "C R P Y S", "resume": "C R P Y S",
                "set-speed": "C R P Y S", "change": "C R P Y S", "complete": "Y S",
                "finalize": "D", "dismiss": "E"}
    assert {verb: frozenset(VERBS[verb]) for verb in VERBS} == \
        {verb: letters(text) for verb, text in expected.items()}


@pytest.mark.parametrize("policy, err, action", [
    ("report", errno.EIO, "report"), ("report", errno.ENOSPC, "report"),
    ("ignore", errno.EIO, "ignore"), ("stop", errno.EIO, "stop"),
    ("enospc", errno.EIO, "report"), ("enospc", errno.ENOSPC, "stop"),
    ("auto", errno.EIO, "report"), ("auto", errno.ENOSPC, "stop"),
])
def test_on_error_policy(policy, err, action):
    assert error_action_for(policy, err) == action


# -- event sequences ---------------------------------------------------------------

def test_success_sequence_and_completed_data(make, rec, registry):
    job = make(chunks=4)
    run_to_end(job)
    assert rec.trace == SUCCESS
    assert rec.data("BLOCK_JOB_COMPLETED") == [completed(4 * CHUNK)]
    assert rec.data("JOB_STATUS_CHANGE")[0] == {"id": "virtio0", "status": "created"}
    assert job.status == "null" and registry.jobs() == []


def test_created_and_running_are_published_before_start_returns(make, rec):
    gate = threading.Semaphore(0)
    job = make(gate=gate)
    assert rec.trace == ["created"]
    job.start()
    assert rec.trace == ["created", "running"]
    gate.release(4)
    assert job.wait(WAIT)


def test_cancel_sequence_and_cancelled_data(make, rec):
    gate = threading.Semaphore(0)
    job = make(chunks=4, gate=gate, speed=12345)
    job.start()
    gate.release(2)                      # chunk 0 done, then held at chunk 1's gate
    wait_until(lambda: job.offset == CHUNK and job.attempts == [0])
    job.cancel()
    gate.release()                       # the body reaches its checkpoint and sees the cancel
    assert job.wait(WAIT)
    assert rec.trace == ["created", "running", "aborting", "abort()", "clean()",
                         "BLOCK_JOB_CANCELLED", "concluded", "null"]
    assert rec.data("BLOCK_JOB_CANCELLED") == [completed(4 * CHUNK, CHUNK, speed=12345)]
    assert job.attempts == [0]


def test_failure_sequence_reports_strerror(make, rec):
    job = make(chunks=4, faults={2: [ImageIOError("custom text", errno=errno.EIO)]})
    run_to_end(job)
    assert rec.trace == ["created", "running", "BLOCK_JOB_ERROR", "aborting", "abort()",
                         "clean()", "BLOCK_JOB_COMPLETED", "concluded", "null"]
    assert rec.data("BLOCK_JOB_ERROR") == [
        {"device": "virtio0", "operation": "read", "action": "report"}]
    assert rec.data("BLOCK_JOB_COMPLETED") == [
        completed(4 * CHUNK, 2 * CHUNK, error="Input/output error")]


def test_write_errors_name_their_operation(make, rec):
    job = make(faults={0: [ImageIOError(errno=errno.EIO, operation="write")]})
    run_to_end(job)
    assert rec.data("BLOCK_JOB_ERROR")[0]["operation"] == "write"


def test_prepare_failure_aborts_from_pending(make, rec):
    job = make(chunks=2, prepare_error=BlockError("Could not update backing file"))
    run_to_end(job)
    assert rec.trace == ["created", "running", "waiting", "pending", "prepare()", "aborting",
                         "abort()", "clean()", "BLOCK_JOB_COMPLETED", "concluded", "null"]
    assert rec.data("BLOCK_JOB_COMPLETED") == [
        completed(2 * CHUNK, error="Could not update backing file")]


def test_an_unexpected_exception_in_the_body_fails_the_job_visibly(make, rec):
    job = make(faults={1: [ImageIOError()]})
    job.run = lambda: (_ for _ in ()).throw(ZeroDivisionError("division by zero"))
    run_to_end(job)
    assert rec.data("BLOCK_JOB_COMPLETED")[0]["error"] == "division by zero"
    assert isinstance(job.exception, ZeroDivisionError)


def test_pause_resume_sequence(make, rec):
    gate = threading.Semaphore(0)
    job = make(chunks=3, gate=gate)
    job.start()
    job.pause()
    # Paused is requested at once, but the status flips only at the next checkpoint.
    assert (job.status, job.info()["paused"]) == ("running", True)
    gate.release()
    rec.wait_for("paused")
    info = job.info()
    assert (info["status"], info["paused"], info["busy"]) == ("paused", True, False)
    assert job.attempts == []
    job.resume()
    gate.release(3)
    assert job.wait(WAIT)
    assert rec.trace == ["created", "running", "paused", "running", "waiting", "pending",
                         "prepare()", "clean()", "BLOCK_JOB_COMPLETED", "concluded", "null"]
    assert job.attempts == [0, 1, 2]


def test_resume_before_the_checkpoint_never_shows_paused(make, rec):
    gate = threading.Semaphore(0)
    job = make(chunks=2, gate=gate)
    job.start()
    job.pause()
    job.resume()
    gate.release(2)
    assert job.wait(WAIT)
    assert rec.trace == SUCCESS


@pytest.mark.parametrize("err, io_status", [(errno.EIO, "failed"), (errno.ENOSPC, "nospace")])
def test_stop_on_error_pauses_and_resume_retries(make, rec, err, io_status):
    job = make(chunks=3, on_error="stop", faults={1: [ImageIOError(errno=err)]})
    job.start()
    rec.wait_for("paused")
    info = job.info()
    assert (info["status"], info["paused"], info["io-status"], info["busy"]) == \
        ("paused", True, io_status, False)
    assert rec.data("BLOCK_JOB_ERROR") == [
        {"device": "virtio0", "operation": "read", "action": "stop"}]
    with pytest.raises(JobError) as refused:
        job.cancel()
    assert refused.value.desc == "The block job for device 'virtio0' is currently paused"
    job.resume()
    assert job.wait(WAIT)
    assert rec.trace == ["created", "running", "BLOCK_JOB_ERROR", "paused", "running",
                         "waiting", "pending", "prepare()", "clean()", "BLOCK_JOB_COMPLETED",
                         "concluded", "null"]
    assert job.attempts == [0, 1, 1, 2]            # chunk 1 was retried
    assert job.io_status == "ok" and rec.data("BLOCK_JOB_COMPLETED") == [completed(3 * CHUNK)]


def test_enospc_policy_stops_on_enospc_and_reports_other_errors(make, rec):
    job = make(chunks=3, on_error="enospc",
               faults={0: [ImageIOError(errno=errno.ENOSPC)], 1: [ImageIOError(errno=errno.EIO)]})
    job.start()
    rec.wait_for("paused")
    assert job.info()["io-status"] == "nospace"
    job.resume()
    assert job.wait(WAIT)
    assert [d["action"] for d in rec.data("BLOCK_JOB_ERROR")] == ["stop", "report"]
    assert rec.data("BLOCK_JOB_COMPLETED")[0]["error"] == "Input/output error"


def test_force_cancel_of_a_job_stopped_on_error(make, rec):
    job = make(chunks=3, on_error="stop", faults={1: [ImageIOError()]})
    job.start()
    rec.wait_for("paused")
    job.cancel(force=True)
    assert job.wait(WAIT)
    assert rec.trace == ["created", "running", "BLOCK_JOB_ERROR", "paused", "running",
                         "aborting", "abort()", "clean()", "BLOCK_JOB_CANCELLED",
                         "concluded", "null"]


def test_ignore_goes_on_and_fails_with_the_first_error(make, rec):
    job = make(chunks=4, on_error="ignore",
               faults={1: [ImageIOError(errno=errno.EIO)], 2: [ImageIOError(errno=errno.ENOSPC)]})
    run_to_end(job)
    assert rec.trace == ["created", "running", "BLOCK_JOB_ERROR", "BLOCK_JOB_ERROR",
                         "aborting", "abort()", "clean()", "BLOCK_JOB_COMPLETED",
                         "concluded", "null"]
    assert [d["action"] for d in rec.data("BLOCK_JOB_ERROR")] == ["ignore", "ignore"]
    assert rec.data("BLOCK_JOB_COMPLETED") == [
        completed(4 * CHUNK, error="Input/output error")]
    assert job.attempts == [0, 1, 2, 3]


def test_auto_finalize_off_waits_in_pending_for_finalize(make, rec):
    job = make(chunks=2, auto_finalize=False)
    job.start()
    rec.wait_for("BLOCK_JOB_PENDING")
    assert rec.trace == ["created", "running", "waiting", "pending", "BLOCK_JOB_PENDING"]
    assert rec.data("BLOCK_JOB_PENDING") == [{"type": "stream", "id": "virtio0"}]
    assert (job.status, job.busy) == ("pending", False)
    job.finalize()
    assert rec.trace[5:] == ["prepare()", "clean()", "BLOCK_JOB_COMPLETED", "concluded", "null"]
    assert job.wait(WAIT)


def test_cancel_in_pending_aborts_without_prepare(make, rec):
    job = make(chunks=2, auto_finalize=False)
    job.start()
    rec.wait_for("BLOCK_JOB_PENDING")
    job.cancel()
    assert rec.trace[5:] == ["aborting", "abort()", "clean()", "BLOCK_JOB_CANCELLED",
                             "concluded", "null"]


def test_auto_dismiss_off_keeps_the_concluded_job_listed(make, rec, registry):
    job = make(chunks=2, auto_dismiss=False)
    run_to_end(job)
    assert rec.trace == SUCCESS[:-1]
    assert registry.jobs() == [job] and registry.find("virtio0") is job
    assert job.info() == {
        "type": "stream", "device": "virtio0", "len": 2 * CHUNK, "offset": 2 * CHUNK,
        "busy": False, "paused": False, "speed": 0, "io-status": "ok", "ready": False,
        "status": "concluded", "auto-finalize": True, "auto-dismiss": False}
    job.dismiss()
    assert rec.trace[-1] == "null" and registry.jobs() == []


def test_a_failed_or_cancelled_concluded_job_shows_its_error(make, rec):
    failed = make("j1", auto_dismiss=False, faults={0: [ImageIOError()]})
    run_to_end(failed)
    assert failed.info()["error"] == "Input/output error"
    gate = threading.Semaphore(0)
    cancelled = make("j2", auto_dismiss=False, gate=gate)
    cancelled.start()
    cancelled.cancel()
    gate.release()
    assert cancelled.wait(WAIT)
    assert cancelled.info()["error"] == "Operation canceled"
    assert "error" not in rec.data("BLOCK_JOB_CANCELLED")[0]


def test_cancel_before_start_concludes_without_a_cancelled_event(make, rec):
    job = make()
    job.cancel()
    assert rec.trace == ["created", "aborting", "abort()", "clean()", "concluded", "null"]
    with pytest.raises(JobError):
        job.start()


def test_a_failing_clean_hook_still_concludes_and_is_raised(make, rec):
    job = make(chunks=1, auto_finalize=False, clean_error=RuntimeError("clean broke"))
    job.start()
    rec.wait_for("BLOCK_JOB_PENDING")
    with pytest.raises(RuntimeError, match="clean broke"):
        job.finalize()
    assert rec.trace[-3:] == ["BLOCK_JOB_COMPLETED", "concluded", "null"]


# -- verbs refused, with QEMU's texts -------------------------------------------------

VERB_CALLS = {
    "cancel": lambda job: job.cancel(force=True),
    "pause": lambda job: job.pause(),
    "resume": lambda job: job.resume(),
    "set-speed": lambda job: job.set_speed(1),
    "complete": lambda job: job.complete(),
    "finalize": lambda job: job.finalize(),
    "dismiss": lambda job: job.dismiss(),
}


def expected_refusal(status, verb, user_paused):
    """The error QEMU gives for ``verb`` in ``status`` (None: the verb would be accepted)."""
    if verb == "resume" and not user_paused:
        return "Can't resume a job that was not paused"      # checked before the state
    if status not in VERBS[verb]:
        return "Job 'virtio0' in state '%s' cannot accept command verb '%s'" % (status, verb)
    if verb == "pause" and user_paused:
        return "Job is already paused"
    if verb == "complete":
        return "The active block job 'virtio0' cannot be completed"
    return None


REACHABLE = ("created", "running", "paused", "pending", "concluded")
REFUSALS = [(state, verb) for state in REACHABLE for verb in sorted(VERB_CALLS)
            if expected_refusal(state, verb, state == "paused") is not None]


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


def test_the_refusal_cases_cover_every_reachable_state():
    assert {state for state, _ in REFUSALS} == set(REACHABLE) and len(REFUSALS) == 23


@pytest.mark.parametrize("state, verb", REFUSALS)
def test_refused_verbs_in_reachable_states(make, rec, state, verb):
    job = job_in_state(make, rec, state)
    assert job.status == state
    expected = expected_refusal(state, verb, job.user_paused)
    before = (list(rec.trace), job.info())
    with pytest.raises(JobError) as refused:
        VERB_CALLS[verb](job)
    assert refused.value.desc == expected
    assert (rec.trace, job.info()) == before


@pytest.mark.parametrize("state", STATES)
def test_every_verb_outside_its_states_is_refused(make, rec, state):
    # White-box: force each state (most cannot be reached by a stream) and check the table.
    job = make()
    job.status = state
    for verb in sorted(set(VERB_CALLS) - {"resume"}):
        expected = expected_refusal(state, verb, False)
        if expected is None:
            continue
        with pytest.raises(JobError) as refused:
            VERB_CALLS[verb](job)
        assert refused.value.desc == expected, verb
        assert job.status == state
    job.status = "created"


def test_complete_on_a_running_stream(make):
    job = job_in_state(make, None, "running")
    with pytest.raises(JobError) as refused:
        job.complete()
    assert refused.value.desc == \
        "Job 'virtio0' in state 'running' cannot accept command verb 'complete'"


def test_pause_errors(make, rec):
    job = job_in_state(make, rec, "running")
    with pytest.raises(JobError, match="^Can't resume a job that was not paused$"):
        job.resume()
    job.pause()
    with pytest.raises(JobError, match="^Job is already paused$"):
        job.pause()
    with pytest.raises(JobError) as refused:
        job.cancel()
    assert refused.value.desc == "The block job for device 'virtio0' is currently paused"
    assert job.user_paused and not job.is_cancelled


def test_negative_speed_is_refused_and_changes_nothing(make, rec):
    job = job_in_state(make, rec, "running")
    job.set_speed(4096)
    with pytest.raises(JobError) as refused:
        job.set_speed(-5)
    assert refused.value.desc == "Parameter 'speed' expects a non-negative value"
    assert job.info()["speed"] == 4096


def test_a_negative_speed_at_creation_gives_created_then_null(bus, rec, registry):
    job = ChunkJob("virtio0", bus, rec, speed=-1)
    with pytest.raises(JobError) as refused:
        registry.add(job)
    assert refused.value.desc == "Parameter 'speed' expects a non-negative value"
    assert rec.trace == ["created", "null"] and registry.jobs() == []


def test_an_unknown_on_error_policy_is_refused(bus, rec):
    with pytest.raises(JobError) as refused:
        ChunkJob("virtio0", bus, rec, on_error="retry")
    assert refused.value.desc == "Parameter 'on-error' does not accept value 'retry'"


# -- registry ------------------------------------------------------------------------

@pytest.mark.parametrize("job_id", ["#block377", "", "1abc", "a b", "-a", "a/b", "v\u00edrtio0",
                                    "a,b"])
def test_invalid_job_ids(bus, rec, registry, job_id):
    with pytest.raises(JobError) as refused:
        registry.add(ChunkJob(job_id, bus, rec))
    assert refused.value.desc == "Invalid job ID '%s'" % job_id
    assert rec.trace == [] and registry.jobs() == []


@pytest.mark.parametrize("job_id", ["virtio0", "ide0-hd0", "j1", "a.b_c-d", "Z"])
def test_valid_job_ids(job_id):
    assert id_wellformed(job_id)


def test_a_job_id_is_required(bus, rec, registry):
    with pytest.raises(JobError, match="^An explicit job ID is required$"):
        registry.add(ChunkJob(None, bus, rec))


def test_job_id_in_use_until_the_job_is_gone(make, bus, rec, registry):
    first = make(auto_dismiss=False)
    with pytest.raises(JobError) as refused:
        make()
    assert refused.value.desc == "Job ID 'virtio0' already in use"
    assert rec.trace == ["created"] and registry.jobs() == [first]
    run_to_end(first)
    with pytest.raises(JobError, match="already in use"):
        make()
    first.dismiss()
    second = make()
    assert registry.jobs() == [second]


def test_find_and_creation_order(make, registry):
    jobs = [make(name) for name in ("virtio1", "ide0-hd0", "virtio0")]
    assert registry.jobs() == jobs
    assert registry.find("ide0-hd0") is jobs[1]
    with pytest.raises(JobError) as missing:
        registry.find("nosuch")
    assert missing.value.desc == "Block job 'nosuch' not found" and missing.value.not_found


# -- the rate-limit sleep --------------------------------------------------------------

def sleeping_job(make, **kw):
    """A job at 1 byte/s that copied one chunk: its next sleep would last ~6553 s."""
    job = make(chunks=3, speed=1, **kw)
    job.start()
    wait_until(lambda: job.attempts == [0] and not job.busy)
    assert job.info()["status"] == "running"
    return job


@pytest.mark.parametrize("new_speed", [0, 64 * 1024 * 1024])
def test_a_sleeping_job_wakes_when_the_limit_is_lifted_or_raised(make, rec, new_speed):
    job = sleeping_job(make)
    job.set_speed(new_speed)
    assert job.wait(WAIT)
    assert rec.trace == SUCCESS
    assert rec.data("BLOCK_JOB_COMPLETED") == [completed(3 * CHUNK, speed=new_speed)]


def test_a_sleeping_job_wakes_for_cancel(make, rec):
    job = sleeping_job(make)
    job.cancel()
    assert job.wait(WAIT)
    assert rec.data("BLOCK_JOB_CANCELLED") == [completed(3 * CHUNK, CHUNK, speed=1)]


def test_a_sleeping_job_wakes_for_pause_and_sleeps_on_after_resume(make, rec):
    job = sleeping_job(make)
    job.pause()
    rec.wait_for("paused")
    job.resume()
    rec.wait_for("running", 2)
    wait_until(lambda: not job.busy)          # asleep again: the delay still holds
    assert (job.status, job.attempts) == ("running", [0])
    job.set_speed(0)
    assert job.wait(WAIT)
    assert rec.trace == ["created", "running", "paused", "running"] + SUCCESS[2:]


def test_busy_while_the_body_works(make, rec):
    job = job_in_state(make, rec, "running")
    assert job.info()["busy"] is True


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.mark.parametrize("skip, seconds", [((), 10.0), (range(0, 160, 2), 5.0)])
def test_the_job_moves_at_speed_and_charges_only_copied_bytes(make, skip, seconds):
    clock = FakeClock()
    job = make(chunks=160, speed=1024 * 1024, skip=skip, clock=clock, sleep=clock.advance)
    run_to_end(job)
    assert job.offset == 160 * CHUNK                      # 10 MiB, half of it copied or all
    assert clock.now - 100.0 == pytest.approx(seconds, rel=0.03)
