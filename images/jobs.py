"""The generic block-job engine: QEMU's job.c and blockjob.c over Python threads.

A ``Job`` owns its state (the tables in ``job_states``), its verbs (pause, resume,
cancel, set-speed, complete, finalize, dismiss, with QEMU's refusal texts), its rate
limiter and its events.  A subclass supplies the body ``run()``, executed in a
daemon thread, and the hooks ``prepare``/``abort``/``clean``.  The body calls
``checkpoint()`` between chunks: that is where pause, cancel and the rate-limit
sleep happen, as at QEMU's ``block_job_ratelimit_sleep``.

Event order follows QEMU 7.2 (reference section 4.2):
    success  created running waiting pending [prepare] BLOCK_JOB_COMPLETED concluded null
    cancel   ... aborting BLOCK_JOB_CANCELLED concluded null
    failure  ... aborting BLOCK_JOB_COMPLETED{error} concluded null
Every status change is one JOB_STATUS_CHANGE.  'created' is published by
``JobRegistry.add`` (or by ``start`` for a job never added), after the id checks,
so a refused id publishes nothing; a negative speed then gives 'created', 'null'
and an error, as QEMU's block_job_create does.

Locking: one re-entrant lock per job guards all of its state.  Events are published
and the hooks prepare/abort/clean run with that lock held, so what subscribers see is
ordered exactly as the state changed; hooks must not wait for other threads that use
the job's verbs.  The body runs without the lock.
"""
import errno
import os
import threading
import time

from images.errors import JobError
from images.job_states import (FINISHED, ON_ERROR_POLICIES, STATES, TRANSITIONS,  # noqa: F401
                               VERBS, error_action_for, error_text, io_status_for,
                               verb_error_text)
from images.job_registry import JobRegistry  # noqa: F401  (re-exported)
from images.ratelimit import RateLimiter

__all__ = ["Job", "JobRegistry", "STATES", "TRANSITIONS", "VERBS"]

SPEED_ERROR = "Parameter 'speed' expects a non-negative value"

# Longest single wait of the rate-limit sleep; the delay is re-read after it, so this
# only keeps huge delays (tiny speeds) within what Condition.wait accepts.
MAX_WAIT = 3600.0


class Job:
    """One block job.  Subclasses set ``job_type`` and implement ``run``."""

    job_type = "stream"
    supports_complete = False   # only jobs with a READY phase (mirror) can be completed
    # BLOCK_JOB_ERROR's 'operation' when the job fixes it (stream: always 'read');
    # None reports the failed request's own operation.
    error_operation = None

    def __init__(self, job_id, events, *, speed=0, on_error="report", auto_finalize=True,
                 auto_dismiss=True, clock=time.monotonic, sleep=None):
        if on_error not in ON_ERROR_POLICIES:
            raise JobError("Parameter 'on-error' does not accept value '%s'" % (on_error,))
        self.id = job_id
        self.events = events
        self.status = "undefined"
        self.len = 0
        self.offset = 0
        self.speed = speed          # validated when the job is created (see create)
        self.on_error = on_error
        self.io_status = "ok"
        self.error = None           # the failure message once the job failed or was cancelled
        self.exception = None       # the exception behind ``error``, for diagnosis
        self.busy = False
        self.auto_finalize = auto_finalize
        self.auto_dismiss = auto_dismiss
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)      # kicks for the job thread
        self._changed = threading.Condition(self._lock)   # status changes, for wait()
        self._limiter = RateLimiter(0, clock=clock)
        self._sleep = sleep
        self._pause_count = 0
        self._user_paused = False
        self._cancelled = False
        self._started = False
        self._body_done = False
        self._ignored_error = None
        self._thread = None
        self.hook_errors = []

    # -- public state --------------------------------------------------------
    @property
    def paused(self) -> bool:
        return self._pause_count > 0

    @property
    def user_paused(self) -> bool:
        return self._user_paused

    @property
    def is_cancelled(self) -> bool:
        return self._cancelled

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

    # -- life cycle ------------------------------------------------------------
    def create(self):
        """job_create + block_job_create: 'created', then the speed check ('null' on failure)."""
        with self._lock:
            if self.status != "undefined":
                return
            self._transition("created")
            if self.speed < 0:
                self._transition("null")
                raise JobError(SPEED_ERROR)
            self._limiter.set_speed(self.speed)

    def start(self):
        """created -> running, then run the body in a daemon thread."""
        with self._lock:
            self.create()
            if self.status != "created" or self._started:
                raise JobError("Job '%s' cannot be started in state '%s'" % (self.id, self.status))
            self._started = True
            self.busy = True
            self._transition("running")
            self._thread = threading.Thread(target=self._main, name="job-%s" % self.id,
                                            daemon=True)
            self._thread.start()

    def wait(self, timeout=None) -> bool:
        """Block until the job is concluded or gone (True), or ``timeout`` seconds passed."""
        with self._lock:
            return self._changed.wait_for(lambda: self.status in FINISHED, timeout)

    def _main(self):
        failure = None
        try:
            self.run()
        except Exception as exc:    # any failure of the body fails the job, visibly
            failure = exc
        with self._lock:
            known = len(self.hook_errors)
            self._body_done = True
            self.busy = False
            self._completed(failure)
        self._raise_hook_errors(known)

    def _completed(self, failure):
        """job_completed: decide success or abort once the body has returned."""
        if failure is None:
            failure = self._ignored_error
        if failure is not None:
            self._fail(failure)
        elif self._cancelled:
            self.error = os.strerror(errno.ECANCELED)
        if self.error is not None:
            self._transition("aborting")
            self._finalize_single()
            return
        self._transition("waiting")
        self._transition("pending")
        if not self.auto_finalize:
            self.events.publish("BLOCK_JOB_PENDING", {"type": self.job_type, "id": self.id})
            return
        self._do_finalize()

    def _fail(self, exc):
        self.exception = exc
        self.error = error_text(exc)

    def _do_finalize(self):
        """job_do_finalize: prepare, then commit or abort."""
        try:
            self.prepare()
        except Exception as exc:    # a failed prepare fails the job (QEMU: ret < 0)
            self._fail(exc)
            self._transition("aborting")
        self._finalize_single()

    def _finalize_single(self):
        """job_finalize_single: abort/clean hooks, the final event, conclude, maybe dismiss."""
        if self.error is not None:
            self._call_hook(self.abort)
        self._call_hook(self.clean)
        if self._started:
            data = {"type": self.job_type, "device": self.id, "len": self.len,
                    "offset": self.offset, "speed": self.speed}
            if self._cancelled:
                self.events.publish("BLOCK_JOB_CANCELLED", data)
            else:
                if self.error is not None:
                    data["error"] = self.error
                self.events.publish("BLOCK_JOB_COMPLETED", data)
        self._transition("concluded")
        if self.auto_dismiss or not self._started:
            self._transition("null")

    def _call_hook(self, hook):
        # A failing hook must not leave the job half torn down; its exception is
        # kept and re-raised once the job has concluded (see _raise_hook_errors).
        try:
            hook()
        except Exception as exc:
            self.hook_errors.append(exc)

    def _raise_hook_errors(self, known):
        """Re-raise the first hook error that arose since ``known`` errors were recorded."""
        if len(self.hook_errors) > known:
            raise self.hook_errors[known]

    def _transition(self, new_status):
        old = self.status
        if new_status not in TRANSITIONS[old]:
            raise RuntimeError("job %r: illegal transition %s -> %s" % (self.id, old, new_status))
        self.status = new_status
        if new_status != old:
            self.events.publish("JOB_STATUS_CHANGE", {"id": self.id, "status": new_status})
        self._changed.notify_all()

    def _require_listed(self):
        """A job in 'null' is gone (QEMU's find_block_job would not find it): a verb that
        lost the race with the job's end gets "not found", not a state refusal."""
        if self.status == "null":
            raise JobError("Block job '%s' not found" % (self.id,), not_found=True)

    def _apply_verb(self, verb):
        self._require_listed()
        if self.status not in VERBS[verb]:
            raise JobError(verb_error_text(self.id, self.status, verb))

    # -- verbs -----------------------------------------------------------------
    def pause(self):
        """job_user_pause: the status turns 'paused' when the body reaches a checkpoint."""
        with self._lock:
            self._apply_verb("pause")
            if self._user_paused:
                raise JobError("Job is already paused")
            self._user_paused = True
            self._pause_count += 1
            self._wake.notify_all()

    def resume(self):
        """job_user_resume: also resets io-status to ok (block_job_user_resume)."""
        with self._lock:
            self._require_listed()
            if not self._user_paused or self._pause_count <= 0:
                raise JobError("Can't resume a job that was not paused")
            self._apply_verb("resume")
            self._unpause_user()
            self._wake.notify_all()

    def _unpause_user(self):
        self.io_status = "ok"
        self._user_paused = False
        self._pause_count -= 1

    def cancel(self, force=False):
        """qmp_block_job_cancel + job_cancel.  Jobs without a soft cancel always cancel hard."""
        with self._lock:
            known = len(self.hook_errors)
            self._require_listed()
            if self._user_paused and not force:
                raise JobError("The block job for device '%s' is currently paused" % self.id)
            self._apply_verb("cancel")
            if self._user_paused:
                self._unpause_user()
            self._cancelled = True
            if not self._started or self._body_done:
                # No body will return (never started, or held in 'pending' for finalize):
                # conclude now, as a body that returned after the cancel would.
                self._completed(None)
            else:
                self._wake.notify_all()
        self._raise_hook_errors(known)

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

    def complete(self):
        """job_complete: only jobs in ready/standby that support it (never stream)."""
        with self._lock:
            self._apply_verb("complete")
            if self._cancelled or not self.supports_complete:
                raise JobError("The active block job '%s' cannot be completed" % self.id)
            self.on_complete()

    def finalize(self):
        """job_finalize: run prepare for a job held in 'pending' (auto-finalize off)."""
        with self._lock:
            known = len(self.hook_errors)
            self._apply_verb("finalize")
            self._do_finalize()
        self._raise_hook_errors(known)

    def dismiss(self):
        """job_dismiss: concluded -> null (auto-dismiss off)."""
        with self._lock:
            self._apply_verb("dismiss")
            self._transition("null")

    # -- hooks for subclasses -----------------------------------------------------
    def run(self):
        """The body, in the job thread.  Return = success; raise = failure."""
        raise NotImplementedError

    def prepare(self):
        """On success, in 'pending', before BLOCK_JOB_COMPLETED; raising fails the job."""

    def abort(self):
        """After a failure or a cancel."""

    def clean(self):
        """Always, last, before the final event."""

    def on_complete(self):
        """The 'complete' verb for jobs with ``supports_complete``."""

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

    def _pause_point(self):
        """job_pause_point: park in 'paused' while a pause is requested (lock held)."""
        if self._pause_count <= 0 or self._cancelled:
            return
        resumed_status = self.status
        self.busy = False
        # job_pause_point: a ready job (mirror) parks in 'standby', any other in 'paused'
        self._transition("standby" if resumed_status == "ready" else "paused")
        while self._pause_count > 0 and not self._cancelled:
            self._wake.wait()
        self.busy = True
        self._transition(resumed_status)

    def account_copied(self, nbytes):
        """Charge copied bytes to the rate limiter (skipped ranges are free)."""
        with self._lock:
            self._limiter.account(nbytes)

    def progress(self, nbytes):
        with self._lock:
            self.offset += nbytes

    def set_len(self, length):
        with self._lock:
            self.len = length

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
