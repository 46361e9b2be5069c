"""Issue 4, acceptance 1: the seed's commands, typed verbatim, on a demo chain.

The seed (docs/live-block-ops.txt, 2012) types ``block_stream virtio0``,
``block_stream virtio0 A``, ``info block-jobs``, ``snapshot_blkdev ide0-hd0
/new-path/disk.img qcow2`` and ``block_stream ide0-hd0``.  Each line goes through
the real HMP interpreter over the real core, on a chain ``monitor.demo`` builds
with our own code; qemu-img is the oracle for the images afterwards.  The only
liberty taken: ``/new-path`` lives inside the test's directory.

To see a job in ``info block-jobs`` deterministically, the test holds the top
image's lock (every image method takes it, and so does each stream chunk), so
the job is parked before its first chunk while the monitor answers.
"""
import hashlib
import os
import threading

import pytest

from commands.core import BlockCore
from commands.hmp import HmpInterpreter
from conftest import run
from monitor.demo import VIRTUAL_SIZE, build_demo, guest_digest

MONITOR_TIMEOUT = 60     # seconds; a generous bound so a broken job fails instead of hanging


def sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


class Session:
    """A real core with the demo's drives, an HMP interpreter and the events it published."""

    def __init__(self, demo):
        self.demo = demo
        self.core = BlockCore()
        for drive in demo.drives:
            self.core.add_drive(drive.device, drive.path)
        self.events = []
        self.core.events.subscribe(self.events.append)
        self.hmp = HmpInterpreter(self.core)

    def type(self, line, ok=True):
        result = self.hmp.run_line(line)
        assert result.ok is ok, (line, result.output)
        return result.output

    def wait(self):
        assert self.core.wait_jobs(timeout=MONITOR_TIMEOUT)

    def completed(self, device):
        return [e["data"] for e in self.events
                if e["event"] == "BLOCK_JOB_COMPLETED" and e["data"]["device"] == device]

    def path(self, name):
        return os.path.join(self.demo.directory, name)


@pytest.fixture
def pristine(tmp_path_factory):
    """An untouched demo (the build is deterministic): the oracle for content."""
    return build_demo(str(tmp_path_factory.mktemp("pristine") / "demo"))


@pytest.fixture
def session(tmp_path):
    demo = build_demo(str(tmp_path / "demo"))
    live = Session(demo)
    yield live
    live.core.shutdown()


def parked_job_info(session, line):
    """Type ``line`` (a block_stream) and ``info block-jobs`` while the job waits for the top's lock."""
    top = session.core.active_image(line.split()[1])
    with top.lock:
        assert session.type(line) == ""
        return session.type("info block-jobs")


def backing_lines(qemu_img, path):
    info = run(qemu_img, "info", "--backing-chain", path).stdout
    return [line for line in info.splitlines() if line.startswith("backing file:")]


def test_block_stream_virtio0_A_merges_B_and_C_into_D(session, pristine, qemu_img):
    before = guest_digest(session.core, "virtio0")
    a_sha = sha256(session.path("A.qcow2"))
    assert parked_job_info(session, "block_stream virtio0 A") == (
        "Streaming device virtio0: Completed 0 of %d bytes, speed limit 0 bytes/s\n" % VIRTUAL_SIZE)
    session.wait()
    assert session.completed("virtio0") == [{"type": "stream", "device": "virtio0", "len": VIRTUAL_SIZE,
                                             "offset": VIRTUAL_SIZE, "speed": 0}]
    assert session.type("info block-jobs") == "No active jobs\n"
    assert session.type("info block virtio0") == (
        "virtio0 (D): %s (qcow2)\n"
        "    Cache mode:       writeback\n"
        "    Backing file:     A.qcow2 (chain depth: 1)\n" % session.path("D.qcow2"))
    assert session.type("info blockmap virtio0").startswith("virtio0: [A] <- [D]\n")
    assert guest_digest(session.core, "virtio0") == before
    session.core.shutdown()
    # [A] <- [D], the relative name kept; the content is the original chain's
    assert backing_lines(qemu_img, session.path("D.qcow2")) == ["backing file: A.qcow2 (actual path: %s)"
                                                                % session.path("A.qcow2")]
    run(qemu_img, "check", session.path("D.qcow2"))
    run(qemu_img, "compare", session.path("D.qcow2"), pristine.drives[0].path)
    assert sha256(session.path("A.qcow2")) == a_sha


def test_block_stream_virtio0_makes_D_standalone(session, pristine, qemu_img):
    before = guest_digest(session.core, "virtio0")
    assert parked_job_info(session, "block_stream virtio0") == (
        "Streaming device virtio0: Completed 0 of %d bytes, speed limit 0 bytes/s\n" % VIRTUAL_SIZE)
    session.wait()
    assert [e["offset"] for e in session.completed("virtio0")] == [VIRTUAL_SIZE]
    assert session.type("info block virtio0") == (
        "virtio0 (D): %s (qcow2)\n    Cache mode:       writeback\n" % session.path("D.qcow2"))
    assert session.type("info blockmap virtio0").startswith("virtio0: [D]\n")
    assert guest_digest(session.core, "virtio0") == before
    session.core.shutdown()
    assert backing_lines(qemu_img, session.path("D.qcow2")) == []
    run(qemu_img, "check", session.path("D.qcow2"))
    run(qemu_img, "compare", session.path("D.qcow2"), pristine.drives[0].path)


def test_both_seed_streams_in_turn(session, pristine, qemu_img):
    """The seed's order in one session: the merge onto A, then the full stream."""
    assert session.type("block_stream virtio0 A") == ""
    session.wait()
    assert session.type("block_stream virtio0") == ""
    session.wait()
    assert len(session.completed("virtio0")) == 2
    assert session.type("info blockmap virtio0").startswith("virtio0: [D]\n")
    session.core.shutdown()
    assert backing_lines(qemu_img, session.path("D.qcow2")) == []
    run(qemu_img, "compare", session.path("D.qcow2"), pristine.drives[0].path)


def test_live_copy_snapshot_then_stream_leaves_a_standalone_copy(session, pristine, qemu_img):
    new_disk = session.demo.new_disk_path
    old_disk = session.path("disk0.qcow2")
    before = guest_digest(session.core, "ide0-hd0")
    assert session.type("snapshot_blkdev ide0-hd0 %s qcow2" % new_disk) == ""
    assert session.type("info block ide0-hd0") == (
        "ide0-hd0 (disk): %s (qcow2)\n"
        "    Cache mode:       writeback\n"
        "    Backing file:     %s (chain depth: 1)\n" % (new_disk, old_disk))
    old_sha = sha256(old_disk)
    assert parked_job_info(session, "block_stream ide0-hd0") == (
        "Streaming device ide0-hd0: Completed 0 of %d bytes, speed limit 0 bytes/s\n" % VIRTUAL_SIZE)
    session.wait()
    assert [e["offset"] for e in session.completed("ide0-hd0")] == [VIRTUAL_SIZE]
    assert session.type("info block ide0-hd0") == (
        "ide0-hd0 (disk): %s (qcow2)\n    Cache mode:       writeback\n" % new_disk)
    assert guest_digest(session.core, "ide0-hd0") == before
    session.core.shutdown()
    assert backing_lines(qemu_img, new_disk) == []
    run(qemu_img, "check", new_disk)
    compare = run(qemu_img, "compare", new_disk, pristine.drives[1].path)
    assert compare.stdout == "Images are identical.\n"
    assert sha256(old_disk) == old_sha       # the old disk was left alone by the stream
    run(qemu_img, "compare", old_disk, pristine.drives[1].path)


def test_guest_writes_during_the_seed_stream_reach_the_new_file(session, qemu_img):
    """While ``block_stream ide0-hd0`` runs, the guest writes through qemu-io; all of it lands."""
    new_disk = session.demo.new_disk_path
    session.type("snapshot_blkdev ide0-hd0 %s qcow2" % new_disk)
    top = session.core.active_image("ide0-hd0")
    with top.lock:
        session.type("block_stream ide0-hd0")
        writer = threading.Thread(target=session.type, args=('qemu-io ide0-hd0 "write -P 0x5a 1M 64k"',))
        writer.start()
    writer.join(MONITOR_TIMEOUT)
    session.wait()
    assert session.type('qemu-io ide0-hd0 "read -P 0x5a 1M 64k"') == "read 65536/65536 bytes at offset 1048576\n"
    session.core.shutdown()
    assert backing_lines(qemu_img, new_disk) == []
    assert "Pattern verification failed" not in run("qemu-io", "-r", "-c", "read -P 0x5a 1M 64k",
                                                      new_disk).stdout
