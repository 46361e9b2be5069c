"""The job state machine as tables: QEMU job.c JobSTT and JobVerbTable (qapi/job.json).

``TRANSITIONS[s]`` is the set of states a job in state ``s`` may move to;
``VERBS[v]`` is the set of states in which the user verb ``v`` is accepted.
Also here: job id syntax (util/id.c ``id_wellformed``) and a failed job's message,
plain functions of their input.  The on-error policy is a block job's
(``blockjob``).
"""
import os

from images.errors import BlockError, ImageIOError

STATES = ("undefined", "created", "running", "paused", "ready", "standby",
          "waiting", "pending", "aborting", "concluded", "null")

# JobSTT, row by row (job.c).  'aborting' -> 'aborting' is allowed there too.
TRANSITIONS = {
    "undefined": frozenset({"created"}),
    "created": frozenset({"running", "aborting", "null"}),
    "running": frozenset({"paused", "ready", "waiting", "aborting"}),
    "paused": frozenset({"running"}),
    "ready": frozenset({"standby", "waiting", "aborting"}),
    "standby": frozenset({"ready"}),
    "waiting": frozenset({"pending", "aborting"}),
    "pending": frozenset({"aborting", "concluded"}),
    "aborting": frozenset({"aborting", "concluded"}),
    "concluded": frozenset({"null"}),
    "null": frozenset(),
}

_ACTIVE = frozenset({"created", "running", "paused", "ready", "standby"})

# JobVerbTable (job.c).  'change' is mirror-only but kept so the table is QEMU's.
VERBS = {
    "cancel": _ACTIVE | {"waiting", "pending"},
    "pause": _ACTIVE,
    "resume": _ACTIVE,
    "set-speed": _ACTIVE,
    "change": _ACTIVE,
    "complete": frozenset({"ready", "standby"}),
    "finalize": frozenset({"pending"}),
    "dismiss": frozenset({"concluded"}),
}

# States after which the job body has finished and the job is (being) torn down.
FINISHED = frozenset({"concluded", "null"})

def verb_error_text(job_id, state, verb):
    """QEMU's job_apply_verb refusal."""
    return "Job '%s' in state '%s' cannot accept command verb '%s'" % (job_id, state, verb)


def id_wellformed(job_id):
    """util/id.c: an ASCII letter first, then ASCII letters, digits, '-', '.', '_'."""
    if not isinstance(job_id, str) or not job_id:
        return False
    if not (job_id[0].isascii() and job_id[0].isalpha()):
        return False
    return all(ch.isascii() and (ch.isalnum() or ch in "-._") for ch in job_id[1:])


def error_text(exc) -> str:
    """The message a failed job reports: strerror for I/O errors (as QEMU's -errno), else desc."""
    if isinstance(exc, ImageIOError):
        return os.strerror(exc.errno)
    if isinstance(exc, BlockError):
        return exc.desc
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__
