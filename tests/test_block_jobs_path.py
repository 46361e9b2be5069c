"""The start/finish path every job-starting command shares (commands/block_jobs.py),
driven by a job kind other than stream, as mirror, commit and backup will drive it:
the common checks, the op blockers under the kind's name, the default job id, the
common options, and the clean-up after the blockers are released."""
import os

import pytest

from commands.block_jobs import JobKind, JobPlan, common_options, start_block_job
from commands.core import BlockCore
from commands.errors import CommandError
from images.qcow2 import create_qcow2
from images.jobs.stream import StreamJob

MiB = 1 << 20


@pytest.fixture
def core(tmp_path):
    create_qcow2(str(tmp_path / "base.qcow2"), 4 * MiB)
    create_qcow2(str(tmp_path / "top.qcow2"), 4 * MiB, backing_name="base.qcow2")
    core = BlockCore()
    core.add_drive("virtio0", str(tmp_path / "top.qcow2"))
    yield core
    core.shutdown()


def probe_kind(log, early=None, late=None):
    """A job kind that holds the top only and records the order of its steps."""
    def plan(devices, top, device, args):
        log.append(("plan", device))

        def create(job_id, events, on_finished, **common):
            log.append(("create", job_id, common))
            return StreamJob(job_id, events, top, top.backing, on_finished=on_finished, **common)
        return JobPlan(held=[top], create=create,
                       late_check=late or (lambda: log.append(("late",))),
                       cleanup=lambda job: log.append(("cleanup", job.id, busy_text(devices, top))))
    return JobKind("probe", plan=plan, early_check=early or (lambda args: log.append(("early",))))


def busy_text(devices, image):
    try:
        devices.check_not_busy(image)
    except CommandError as err:
        return str(err)
    return None


def test_a_second_kind_runs_the_shared_path_in_qemus_order(core):
    log = []
    assert start_block_job(core, {"device": "virtio0", "speed": 0}, probe_kind(log)) == {}
    top = core.active_image("virtio0")
    assert core.wait_jobs("virtio0", timeout=60)
    assert log[:4] == [("early",), ("plan", "virtio0"), ("late",),
                       ("create", "virtio0", {"speed": 0, "on_error": "report",
                                              "auto_finalize": True, "auto_dismiss": True})]
    # The clean-up runs once the blockers are released.
    assert log[4] == ("cleanup", "virtio0", None)
    assert busy_text(core.devices, top) is None


def test_the_blockers_carry_the_kinds_name_and_are_released_when_registering_fails(core):
    log = []
    top = core.active_image("virtio0")
    core.devices.block([top], "probe")
    with pytest.raises(CommandError) as err:
        start_block_job(core, {"device": "virtio0"}, probe_kind(log))
    assert str(err.value) == "Node 'virtio0' is busy: block device is in use by block job: probe"
    assert ("late",) not in log          # the busy check comes before the kind's late checks
    core.devices.unblock([top])
    # An invalid job id fails in the registry: the blockers taken for it are released again.
    with pytest.raises(Exception) as err:
        start_block_job(core, {"device": "virtio0", "job-id": "1bad"}, probe_kind(log))
    assert "Invalid job ID '1bad'" in str(err.value)
    assert busy_text(core.devices, top) is None


def test_no_job_starts_once_shutting_down(core):
    core.closing = True
    log = []
    with pytest.raises(CommandError) as err:
        start_block_job(core, {"device": "virtio0"}, probe_kind(log))
    assert str(err.value) == "Cannot start a block job: blockmon is shutting down"
    assert log == []


def test_common_options_take_qemus_defaults():
    assert common_options({}) == {"speed": 0, "on_error": "report", "auto_finalize": True,
                                  "auto_dismiss": True}
    assert common_options({"speed": 5, "on-error": "stop", "auto-finalize": False,
                           "auto-dismiss": False}) == {"speed": 5, "on_error": "stop",
                                                       "auto_finalize": False, "auto_dismiss": False}
