"""The generic job: QEMU's job.c over Python threads (states, verbs, the job thread).

A ``Job`` owns its state (the tables in ``states``), its user verbs (pause, resume,
cancel, complete, finalize, dismiss, with QEMU's refusal texts) and its thread.  A
subclass names its ``job_type`` (there is no default) and supplies the body
``run()``, executed in a daemon thread, and the hooks ``prepare``/``abort``/
``clean``.  What a *block* job adds (speed, the device, BLOCK_JOB_* events, the
on-error policy) is ``blockjob.BlockJob``, as QEMU's blockjob.c adds it to job.c.

Event order follows QEMU 7.2 (reference section 4.2):
    success  created running waiting pending [prepare] BLOCK_JOB_COMPLETED concluded null
    cancel   ... aborting BLOCK_JOB_CANCELLED concluded null
    failure  ... aborting BLOCK_JOB_COMPLETED{error} concluded null
Every status change is one JOB_STATUS_CHANGE.  'created' is published by
``JobRegistry.add`` (or by ``start`` for a job never added), after the id checks,
so a refused id publishes nothing.

Locking: one re-entrant lock per job guards all of its state.  Events are published
and the hooks prepare/abort/clean run with that lock held, so what subscribers see is
ordered exactly as the state changed; hooks must not wait for other threads that use
the job's verbs.  The body runs without the lock.
"""
import errno
import os
import threading

from images.errors import JobError
from images.jobs.states import FINISHED, TRANSITIONS, VERBS, error_text, verb_error_text

__all__ = ["Job"]


class Job:
    """One job.  Subclasses name their ``job_type`` and implement ``run``."""

    job_type = None             # every kind names its own: 'stream', 'mirror', ...
    supports_complete = False   # only jobs with a READY phase (mirror) can be completed

    def __init__(self, job_id, events, *, auto_finalize=True, auto_dismiss=True):
        if not self.job_type:
            raise TypeError("%s does not name its job_type" % type(self).__name__)
        self.id = job_id
        self.events = events
        self.status = "undefined"
        self.len = 0
        self.offset = 0
        self.error = None           # the failure message once the job failed or was cancelled
        self.exception = None       # the exception behind ``error``, for diagnosis
        self.busy = False
        self.auto_finalize = auto_finalize
        self.auto_dismiss = auto_dismiss
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)      # kicks for the job thread
        self._changed = threading.Condition(self._lock)   # status changes, for wait()
        self._pause_count = 0
        self._user_paused = False
        self._cancelled = False
        self._started = False
        self._body_done = False
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

    # -- life cycle ------------------------------------------------------------
    def create(self):
        """job_create: 'created' (once)."""
        with self._lock:
            if self.status == "undefined":
                self._transition("created")

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
            self._announce_pending()
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
            self._announce_end()
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

    def _announce_pending(self):
        """Held in 'pending' (auto-finalize off): block jobs publish BLOCK_JOB_PENDING."""

    def _announce_end(self):
        """The final event of a started job, before 'concluded' (BLOCK_JOB_COMPLETED...)."""

    # -- helpers the body calls ------------------------------------------------------
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

    def progress(self, nbytes):
        with self._lock:
            self.offset += nbytes

    def set_len(self, length):
        with self._lock:
            self.len = length
