"""Active commit over QMP and the console (issue 13): READY, complete (the device moves to
base), soft and force cancel, guest writes before and after READY, SIGKILL.

blockmon runs as users run it (``python -m monitor -qmp ...``) on a private copy of the
64 MiB benchmark chain A <- B <- C <- D; qemu-img judges the files.
"""
import os
import random
import signal
import subprocess
import sys
import time

from tests.commitkit import Blockmon, copy_chain, ended, written_by_merge
from tests.conftest import ROOT, run
from tests.oracle import check_clean, fingerprints, identical, info
from tests.test_commit import bm, chain, chain64, files  # noqa: F401  (fixtures)

MiB = 1 << 20


def ready_event(job_id, length):
    return ("BLOCK_JOB_READY", {"type": "commit", "device": job_id, "len": length,
                                "offset": length, "speed": 0})


def test_active_commit_ready_then_complete_moves_the_device_to_base(bm, chain, chain64):  # noqa: F811
    d = os.path.join(chain, "D.qcow2")
    _stream, length = written_by_merge(d, 3)
    above = fingerprints(files(chain, "BCD"))
    bm.ok("block-commit", device="virtio0", speed=256 * 1024)
    assert bm.hmp("block_job_complete virtio0") == \
        "Error: Job 'virtio0' in state 'running' cannot accept command verb 'complete'\n"
    assert bm.hmp("info block-jobs").startswith("Type commit, device virtio0: Completed ")
    bm.hmp("block_job_set_speed virtio0 0")
    bm.wait_event(lambda e: e["event"] == "BLOCK_JOB_READY")
    (job,) = bm.ok("query-block-jobs")
    assert (job["type"], job["status"], job["ready"], job["len"], job["offset"]) == \
        ("commit", "ready", True, length, length)
    assert bm.hmp("info block-jobs") == \
        "Type commit, device virtio0: Completed %d of %d bytes, speed limit 0 bytes/s\n" % (length, length)
    bm.ok("block-job-complete", device="virtio0")
    bm.wait_event(ended("virtio0"))
    done = {"type": "commit", "device": "virtio0", "len": length, "offset": length, "speed": 0}
    assert bm.sequence("virtio0") == ["created", "running", "ready", ready_event("virtio0", length),
                                      "waiting", "pending", ("BLOCK_JOB_COMPLETED", done),
                                      "concluded", "null"]
    assert bm.hmp("info block") == "virtio0 (A): %s (qcow2)\n    Cache mode:       writeback\n" \
        % os.path.join(chain, "A.qcow2")
    assert bm.hmp('qemu-io virtio0 "write -P 0x77 0 64k"') == "wrote 65536/65536 bytes at offset 0\n"
    bm.close()
    a = os.path.join(chain, "A.qcow2")
    assert check_clean(a)[0]
    assert fingerprints(files(chain, "BCD")) == above       # left on disk as they were
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x77 0 64k", d)
    assert identical(a, d)[0]


def test_soft_cancel_at_ready_completes_without_the_switch(bm, chain, chain64):  # noqa: F811
    d = os.path.join(chain, "D.qcow2")
    length = written_by_merge(d, 1)[1]       # base C: what D holds
    bm.ok("block-commit", device="virtio0", base="C.qcow2", **{"job-id": "ac"})
    bm.wait_event(lambda e: e["event"] == "BLOCK_JOB_READY")
    bm.hmp("block_job_cancel ac")
    bm.wait_event(ended("ac"))
    done = {"type": "commit", "device": "ac", "len": length, "offset": length, "speed": 0}
    assert bm.sequence("ac") == ["created", "running", "ready", ready_event("ac", length),
                                 "waiting", "pending", ("BLOCK_JOB_COMPLETED", done),
                                 "concluded", "null"]
    assert "Backing file:     C.qcow2 (chain depth: 3)" in bm.hmp("info block")
    nodes = {n["node-name"]: n["ro"] for n in bm.ok("query-named-block-nodes")}
    assert nodes["C"] is True                # base is read-only again
    bm.close()
    assert identical(d, os.path.join(chain64, "D.qcow2"))[0]
    assert identical(os.path.join(chain, "C.qcow2"), os.path.join(chain64, "D.qcow2"))[0]
    for path in files(chain):
        assert check_clean(path)[0]


def test_force_cancel_at_ready_and_cancel_while_running(bm, chain, chain64):  # noqa: F811
    bm.ok("block-commit", device="virtio0", base="C.qcow2", **{"job-id": "af"})
    bm.wait_event(lambda e: e["event"] == "BLOCK_JOB_READY")
    bm.hmp("block_job_cancel -f af")
    bm.wait_event(ended("af"))
    seq = bm.sequence("af")
    assert seq[:4] == ["created", "running", "ready", seq[3]] and seq[3][0] == "BLOCK_JOB_READY"
    assert seq[4] == "aborting" and seq[5][0] == "BLOCK_JOB_CANCELLED" and seq[6:] == ["concluded", "null"]
    bm.ok("block-commit", device="virtio0", **{"job-id": "ar"}, speed=64 * 1024)
    bm.hmp("block_job_cancel ar")
    bm.wait_event(ended("ar"))
    seq = bm.sequence("ar")
    assert seq[0:2] == ["created", "running"] and seq[2] == "aborting"
    assert seq[3][0] == "BLOCK_JOB_CANCELLED"
    assert "Backing file:     C.qcow2 (chain depth: 3)" in bm.hmp("info block")
    bm.close()
    assert identical(os.path.join(chain, "D.qcow2"), os.path.join(chain64, "D.qcow2"))[0]
    for path in files(chain):
        assert check_clean(path)[0]


def test_guest_writes_before_and_after_ready_reach_base(bm, chain, tmp_path):  # noqa: F811
    d = os.path.join(chain, "D.qcow2")
    model = str(tmp_path / "model.raw")
    run("qemu-img", "convert", "-U", "-O", "raw", d, model)   # -U: blockmon holds D
    rng = random.Random(13)
    writes = []

    def guest(count):
        for _ in range(count):
            offset = rng.randrange(0, 64 * MiB - 192 * 1024) // 512 * 512
            length = rng.choice([512, 4096, 65536, 65536 + 4096, 192 * 1024])
            pattern = rng.randrange(1, 256)
            text = bm.hmp('qemu-io virtio0 "write -P 0x%x %d %d"' % (pattern, offset, length))
            assert text.startswith("wrote %d/%d bytes" % (length, length)), text
            writes.append((offset, length, pattern))

    bm.ok("block-commit", device="virtio0", speed=2 * MiB)
    guest(40)                                 # while the commit is still running
    assert bm.ok("query-block-jobs")[0]["status"] == "running"
    bm.hmp("block_job_set_speed virtio0 0")
    bm.wait_event(lambda e: e["event"] == "BLOCK_JOB_READY")
    guest(40)                                 # after READY: they must reach base too
    bm.ok("block-job-complete", device="virtio0")
    bm.wait_event(ended("virtio0"))
    assert bm.sequence("virtio0")[-3][0] == "BLOCK_JOB_COMPLETED"
    assert "error" not in bm.sequence("virtio0")[-3][1]
    bm.close()
    with open(model, "r+b") as f:
        for offset, length, pattern in writes:
            f.seek(offset)
            f.write(bytes([pattern]) * length)
    a = os.path.join(chain, "A.qcow2")
    assert check_clean(a)[0]
    same, text = identical(a, model, "qcow2", "raw")
    assert same, text


ACTIVE = """
import sys, threading
sys.path.insert(0, %r)
from commands.core import BlockCore
core = BlockCore()
core.add_drive("virtio0", sys.argv[1])
ready = threading.Event()
core.events.subscribe(lambda e: e["event"] == "BLOCK_JOB_READY" and ready.set())
core.execute("block-commit", {"device": "virtio0", "speed": int(sys.argv[2])})
print("started", flush=True)
ready.wait()
print("ready", flush=True)
core.execute("block-job-complete", {"device": "virtio0"})
core.wait_jobs()
print("completed", flush=True)
core.shutdown()
"""


def test_kill_during_active_commit(chain64, tmp_path):  # noqa: F811
    pristine = os.path.join(chain64, "D.qcow2")
    seen = set()
    for i, moment in enumerate([0.0, 0.1, 0.3, 0.6, 1.0, 1.5, 3.0]):
        chain_dir = copy_chain(chain64, str(tmp_path / ("k%d" % i)))
        d, a = os.path.join(chain_dir, "D.qcow2"), os.path.join(chain_dir, "A.qcow2")
        child = subprocess.Popen([sys.executable, "-c", ACTIVE % ROOT, d, str(16 * MiB)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "started"
        time.sleep(moment)
        child.send_signal(signal.SIGKILL)
        child.wait()
        said = child.stdout.read().split()
        child.stdout.close()
        seen.add(said[-1] if said else "started")
        for name in "ABCD":
            ok, text = check_clean(os.path.join(chain_dir, name + ".qcow2"), leaks_ok=True)
            assert ok, (moment, name, text)
        assert info(d)["backing-filename"] == "C.qcow2"
        assert identical(d, pristine)[0], moment          # the old chain still reads right
        if "completed" in said:
            assert identical(a, pristine)[0], moment      # the switch: base is the disk
            continue
        from commands.core import BlockCore
        core = BlockCore()
        core.add_drive("virtio0", d)
        core.execute("block-commit", {"device": "virtio0"})
        while core.execute("query-block-jobs")[0]["status"] != "ready":
            time.sleep(0.01)
        core.execute("block-job-complete", {"device": "virtio0"})
        assert core.wait_jobs(timeout=300)
        core.shutdown()
        assert identical(a, pristine)[0], moment
        assert check_clean(a, leaks_ok=True)[0]
    assert "started" in seen and len(seen) > 1, seen
