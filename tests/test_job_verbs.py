"""The job engine's tables and refusals: JobSTT, JobVerbTable, QEMU's error texts, job ids."""
import errno

import pytest

from images.errors import JobError
from images.jobs.blockjob import error_action_for
from images.jobs.states import STATES, TRANSITIONS, VERBS, id_wellformed
from jobkit import ChunkJob, job_in_state, run_to_end
from jobkit import bus, make, rec, registry  # noqa: F401  (fixtures)


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
    if status == "null":
        return "Block job 'virtio0' not found"                # gone: QEMU no longer finds it
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
