"""The job engine's life cycle: QEMU's event sequences, hooks, on-error policies, rate-limit sleep."""
import errno
import threading

import pytest

from images.errors import BlockError, ImageIOError, JobError
from jobkit import (CHUNK, SUCCESS, WAIT, FakeClock, completed, job_in_state, run_to_end,
                    wait_until)
from jobkit import bus, make, rec, registry  # noqa: F401  (fixtures)


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


@pytest.mark.parametrize("skip, seconds", [((), 10.0), (range(0, 160, 2), 5.0)])
def test_the_job_moves_at_speed_and_charges_only_copied_bytes(make, skip, seconds):
    clock = FakeClock()
    job = make(chunks=160, speed=1024 * 1024, skip=skip, clock=clock, sleep=clock.advance)
    run_to_end(job)
    assert job.offset == 160 * CHUNK                      # 10 MiB, half of it copied or all
    assert clock.now - 100.0 == pytest.approx(seconds, rel=0.03)


def test_a_delay_beyond_what_condition_wait_accepts_is_slept_in_parts(make, rec):
    job = make(chunks=1, speed=1)
    job.account_copied(2 ** 40)        # ~1.1e11 s at 1 byte/s, beyond threading.TIMEOUT_MAX
    job.start()
    wait_until(lambda: not job.busy)
    job.set_speed(0)
    assert job.wait(WAIT)
    assert rec.trace == SUCCESS


# -- a job kind names its type --------------------------------------------------------

def test_a_job_kind_must_name_its_type(bus):
    from images.jobs.blockjob import BlockJob

    class Nameless(BlockJob):
        def run(self):
            pass

    with pytest.raises(TypeError, match="Nameless does not name its job_type"):
        Nameless("virtio0", bus)
