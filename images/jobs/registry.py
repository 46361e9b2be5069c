"""The job registry of one monitor: job ids, their syntax and uniqueness, lookup by id.

A job that reached 'null' (dismissed, automatically or not) is no longer listed and
its id is free again, as in QEMU where such a job is unreferenced.
"""
import threading

from images.errors import JobError
from images.jobs.states import id_wellformed


class JobRegistry:
    """The jobs of one monitor, by id, in creation order; jobs that reached 'null' drop out."""

    def __init__(self):
        self._lock = threading.RLock()   # re-entrant: event subscribers may list jobs
        self._jobs = []

    def add(self, job):
        """job_create's checks, then 'created' is published (call before job.start())."""
        with self._lock:
            if job.id is None:
                raise JobError("An explicit job ID is required")
            if not id_wellformed(job.id):
                raise JobError("Invalid job ID '%s'" % (job.id,))
            if any(other.id == job.id for other in self._live()):
                raise JobError("Job ID '%s' already in use" % (job.id,))
            job.create()
            self._jobs.append(job)

    def find(self, job_id):
        with self._lock:
            for job in self._live():
                if job.id == job_id:
                    return job
        raise JobError("Block job '%s' not found" % (job_id,), not_found=True)

    def jobs(self):
        with self._lock:
            return self._live()

    def _live(self):
        self._jobs = [job for job in self._jobs if job.status != "null"]
        return list(self._jobs)
