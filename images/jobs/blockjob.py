"""The block job: what QEMU's blockjob.c adds to the generic job (``job.Job``).

Speed and its rate limiter (``checkpoint`` is QEMU's ``block_job_ratelimit_sleep``:
pause, cancel and the rate-limit sleep happen there, between chunks), the device
the job works on and its BlockJobInfo, the BLOCK_JOB_* events (PENDING, COMPLETED,
CANCELLED, ERROR) and the on-error policy with its io-status.  A negative speed
gives 'created', 'null' and an error, as QEMU's block_job_create does.
"""
import errno
import time

from images.errors import JobError
from images.jobs.job import Job
from images.jobs.ratelimit import RateLimiter

# BlockdevOnError (qapi/block-core.json): the one list of on-error policies.
ON_ERROR_POLICIES = ("report", "ignore", "enospc", "stop", "auto")

SPEED_ERROR = "Parameter 'speed' expects a non-negative value"

# Longest single wait of the rate-limit sleep; the delay is re-read after it, so this
# only keeps huge delays (tiny speeds) within what Condition.wait accepts.
MAX_WAIT = 3600.0


def error_action_for(policy, err):
    """block_job_error_action: the action ('report'|'ignore'|'stop') for errno ``err``."""
    if policy in ("enospc", "auto"):
        return "stop" if err == errno.ENOSPC else "report"
    if policy in ("report", "ignore", "stop"):
        return policy
    raise ValueError("unknown on-error policy %r" % (policy,))


def io_status_for(err):
    """block_job_iostatus_set_err: 'nospace' for ENOSPC, else 'failed'."""
    return "nospace" if err == errno.ENOSPC else "failed"



class BlockJob(Job):
    """One block job.  Subclasses name their ``job_type`` and implement ``run``."""

    # BLOCK_JOB_ERROR's 'operation' when the job fixes it (stream: always 'read');
    # None reports the failed request's own operation.
    error_operation = None

    def __init__(self, job_id, events, *, speed=0, on_error="report", clock=time.monotonic,
                 sleep=None, **job_options):
        if on_error not in ON_ERROR_POLICIES:
            raise JobError("Parameter 'on-error' does not accept value '%s'" % (on_error,))
        super().__init__(job_id, events, **job_options)
        self.speed = speed          # validated when the job is created (see create)
        self.copied = 0             # bytes really copied (offset counts skipped ranges too)
        self.on_error = on_error
        self.io_status = "ok"
        self._limiter = RateLimiter(0, clock=clock)
        self._sleep = sleep
        self._ignored_error = None

    def info(self) -> dict:
        """BlockJobInfo as query-block-jobs returns it."""
        with self._lock:
            data = {
                "type": self.job_type, "device": self.id, "len": self.len,
                "offset": self.offset, "busy": self.busy, "paused": self.paused,
                "speed": self.speed, "io-status": self.io_status,
                "ready": self.status in ("ready", "standby"), "status": self.status,
                "auto-finalize": self.auto_finalize, "auto-dismiss": self.auto_dismiss,
            }
            if self.error is not None:
                data["error"] = self.error
            return data

    def create(self):
        """job_create + block_job_create: 'created', then the speed check ('null' on failure)."""
        with self._lock:
            if self.status != "undefined":
                return
            super().create()
            if self.speed < 0:
                self._transition("null")
                raise JobError(SPEED_ERROR)
            self._limiter.set_speed(self.speed)

    def _completed(self, failure):
        # on-error 'ignore': the job goes on, and still fails at the end with the first error
        super()._completed(self._ignored_error if failure is None else failure)

    def _announce_pending(self):
        self.events.publish("BLOCK_JOB_PENDING", {"type": self.job_type, "id": self.id})

    def _announce_end(self):
        data = {"type": self.job_type, "device": self.id, "len": self.len,
                "offset": self.offset, "speed": self.speed}
        if self._cancelled:
            self.events.publish("BLOCK_JOB_CANCELLED", data)
            return
        if self.error is not None:
            data["error"] = self.error
        self.events.publish("BLOCK_JOB_COMPLETED", data)

    def _unpause_user(self):
        self.io_status = "ok"       # block_job_user_resume
        super()._unpause_user()

    # -- verbs -----------------------------------------------------------------
    def set_speed(self, speed):
        """block_job_set_speed: kicks a sleeping job only if the limit was lifted or raised."""
        with self._lock:
            self._apply_verb("set-speed")
            if speed < 0:
                raise JobError(SPEED_ERROR)
            old_speed = self.speed
            self._limiter.set_speed(speed)
            self.speed = speed
            if speed == 0 or speed > old_speed:
                self._wake.notify_all()

    # -- helpers the body calls ------------------------------------------------------
    def checkpoint(self) -> bool:
        """Rate-limit sleep and pause point; False once cancelled (the body must return).

        As block_job_ratelimit_sleep: sleep while the limiter asks for it, re-reading
        the delay after every wake-up so that set_speed, pause and cancel act at once.
        """
        while True:
            with self._lock:
                if self._cancelled:
                    return False
                delay = self._limiter.delay()
                if delay > 0 and self._sleep is None:
                    self.busy = False
                    self._wake.wait(min(delay, MAX_WAIT))
                    self.busy = True
            if delay > 0 and self._sleep is not None:
                self._injected_sleep(delay)
            with self._lock:
                self._pause_point()
                if delay <= 0:
                    return not self._cancelled

    def _injected_sleep(self, delay):
        # Tests inject a sleep that advances a fake clock; it runs without the lock.
        with self._lock:
            self.busy = False
        self._sleep(delay)
        with self._lock:
            self.busy = True

    def account_copied(self, nbytes):
        """Charge copied bytes to the rate limiter (skipped ranges are free) and count them."""
        with self._lock:
            self._limiter.account(nbytes)
            self.copied += nbytes

    def error_action(self, exc) -> str:
        """block_job_error_action: publish BLOCK_JOB_ERROR and apply the on-error policy.

        Returns 'report' (the body re-raises), 'ignore' (the body goes on; the job
        still fails at the end with the first such error) or 'retry' (policy stop:
        the job paused with io-status failed/nospace and was resumed or cancelled).
        """
        err = getattr(exc, "errno", None) or errno.EIO
        action = error_action_for(self.on_error, err)
        with self._lock:
            self.events.publish("BLOCK_JOB_ERROR", {
                "device": self.id,
                "operation": self.error_operation or getattr(exc, "operation", "read"),
                "action": action})
            if action == "ignore" and self._ignored_error is None:
                self._ignored_error = exc
            if action != "stop":
                return action
            if not self._user_paused:
                self._pause_count += 1
                self._user_paused = True
            if self.io_status == "ok":
                self.io_status = io_status_for(err)
            self._pause_point()
            return "retry"
