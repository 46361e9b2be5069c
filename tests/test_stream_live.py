"""Streams under load: guest writes, rate limits, I/O errors and kills (issue 3, acceptance 2-5)."""
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from commands.core import BlockCore
from images.faults import FaultInjectingImage
from tests.conftest import ROOT, run
from tests.oracle import check_clean, identical, info

MiB = 1 << 20


def statuses(events):
    return [e["data"]["status"] if e["event"] == "JOB_STATUS_CHANGE" else e["event"] for e in events]


def make_chain(directory, size_mib, base_data_mib, mid_data_mib=0):
    """base <- mid <- top with data at the start of base and a band in mid."""
    def qemu_img(*args):
        subprocess.run(["qemu-img", *args], cwd=directory, check=True, capture_output=True)
    qemu_img("create", "-f", "qcow2", "base.qcow2", "%dM" % size_mib)
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2", "%dM" % size_mib)
    qemu_img("create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2", "%dM" % size_mib)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 %dM" % base_data_mib, "base.qcow2"],
                   cwd=directory, check=True, capture_output=True)
    if mid_data_mib:
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x62 1M %dM" % mid_data_mib, "mid.qcow2"],
                       cwd=directory, check=True, capture_output=True)
    return os.path.join(directory, "top.qcow2")


def guest_model(tmp_path, top):
    """What the guest sees now, as a raw file and a bytearray to apply writes to."""
    model_path = str(tmp_path / "model.raw")
    run("qemu-img", "convert", "-O", "raw", top, model_path)
    with open(model_path, "rb") as f:
        return model_path, bytearray(f.read())


def save_model(model_path, model):
    with open(model_path, "wb") as f:
        f.write(model)


def core_for(top_path):
    core = BlockCore()
    core.add_drive("virtio0", top_path)
    events = []
    core.events.subscribe(events.append)
    return core, events


def test_rate_limit_delivers_the_requested_speed(tmp_path, qemu_img):
    top = make_chain(str(tmp_path), 16, 12)
    core, events = core_for(top)
    core.execute("block-stream", {"device": "virtio0", "speed": 4 * MiB})
    assert core.wait_jobs(timeout=120)
    core.shutdown()
    stamps = {e["event"] if e["event"] != "JOB_STATUS_CHANGE" else e["data"]["status"]:
              e["timestamp"]["seconds"] + e["timestamp"]["microseconds"] / 1e6 for e in events}
    elapsed = stamps["BLOCK_JOB_COMPLETED"] - stamps["running"]
    assert elapsed >= 2.0
    rate = 12 * MiB / elapsed
    assert abs(rate - 4 * MiB) <= 0.1 * 4 * MiB, rate / MiB


def test_pause_resume_cancel_sequence(tmp_path, qemu_img):
    top = make_chain(str(tmp_path), 16, 12)
    core, events = core_for(top)
    core.execute("block-stream", {"device": "virtio0", "speed": 1 * MiB})
    core.execute("block-job-pause", {"device": "virtio0"})
    deadline = time.monotonic() + 30
    while core.execute("query-block-jobs")[0]["status"] != "paused" and time.monotonic() < deadline:
        time.sleep(0.02)
    job = core.execute("query-block-jobs")[0]
    assert job["status"] == "paused" and job["paused"] is True
    core.execute("block-job-resume", {"device": "virtio0"})
    core.execute("block-job-cancel", {"device": "virtio0"})
    assert core.wait_jobs(timeout=60)
    core.shutdown()
    assert statuses(events) == ["created", "running", "paused", "running", "aborting",
                                "BLOCK_JOB_CANCELLED", "concluded", "null", "SHUTDOWN"]
    assert info(top)["backing-filename"] == "mid.qcow2"
    assert check_clean(top)[0]


def inject_into_mid(core):
    top = core.active_image("virtio0")
    faulty = FaultInjectingImage(top.backing)
    top.backing = faulty
    return faulty


def test_read_error_reported(tmp_path, qemu_img):
    top = make_chain(str(tmp_path), 8, 2, mid_data_mib=4)
    core, events = core_for(top)
    inject_into_mid(core).inject("read", 2 * MiB, MiB)
    core.execute("block-stream", {"device": "virtio0"})
    assert core.wait_jobs(timeout=60)
    core.shutdown()
    assert statuses(events) == ["created", "running", "BLOCK_JOB_ERROR", "aborting",
                                "BLOCK_JOB_COMPLETED", "concluded", "null", "SHUTDOWN"]
    assert events[2]["data"] == {"device": "virtio0", "operation": "read", "action": "report"}
    completed = events[4]["data"]
    assert completed["error"] == "Input/output error"
    assert info(top)["backing-filename"] == "mid.qcow2"
    assert check_clean(top)[0]


def test_read_error_stop_then_resume_completes(tmp_path, qemu_img):
    top = make_chain(str(tmp_path), 8, 2, mid_data_mib=4)
    pristine = str(tmp_path / "pristine.raw")
    run("qemu-img", "convert", "-O", "raw", top, pristine)
    core, events = core_for(top)
    faulty = inject_into_mid(core)
    faulty.inject("read", 2 * MiB, MiB)
    core.execute("block-stream", {"device": "virtio0", "on-error": "stop"})
    deadline = time.monotonic() + 30
    while "paused" not in statuses(events) and time.monotonic() < deadline:
        time.sleep(0.02)
    job = core.execute("query-block-jobs")[0]
    assert (job["status"], job["io-status"], job["paused"]) == ("paused", "failed", True)
    faulty.clear()
    core.execute("block-job-resume", {"device": "virtio0"})
    assert core.wait_jobs(timeout=60)
    core.shutdown()
    assert statuses(events) == ["created", "running", "BLOCK_JOB_ERROR", "paused", "running", "waiting",
                                "pending", "BLOCK_JOB_COMPLETED", "concluded", "null", "SHUTDOWN"]
    assert events[2]["data"]["action"] == "stop"
    assert "backing-filename" not in info(top)
    assert identical(top, pristine, "qcow2", "raw")[0]


def test_guest_writes_during_stream_all_survive(tmp_path, qemu_img):
    size = 32 * MiB
    top = make_chain(str(tmp_path), 32, 16, mid_data_mib=12)
    model_path, model = guest_model(tmp_path, top)
    core, _ = core_for(top)
    device = core.active_image("virtio0")
    core.execute("block-stream", {"device": "virtio0", "speed": 4 * MiB})
    rng = random.Random(7)
    writes_while_streaming = 0
    for _ in range(3000):
        offset = rng.randrange(size - 1)
        length = min(rng.randrange(1, 96 * 1024), size - offset)
        data = bytes([rng.randrange(256)]) * length
        device.write(offset, data)
        model[offset:offset + length] = data
        writes_while_streaming += bool(core.jobs())
    assert writes_while_streaming >= 1000, "the stream ended before enough guest writes ran"
    if core.jobs():
        core.execute("block-job-set-speed", {"device": "virtio0", "speed": 0})
    assert core.wait_jobs(timeout=120)
    core.shutdown()
    save_model(model_path, model)
    assert "backing-filename" not in info(top)
    assert check_clean(top)[0]
    same, text = identical(top, model_path, "qcow2", "raw")
    assert same, text


STREAMER = """
import sys
sys.path.insert(0, %r)
from commands.core import BlockCore
core = BlockCore()
core.add_drive("virtio0", sys.argv[1])
core.execute("block-stream", {"device": "virtio0", "speed": int(sys.argv[2])})
print("started", flush=True)
core.wait_jobs()
core.shutdown()
print("done", flush=True)
"""


def test_kill_during_stream_leaves_valid_images(bench_chain_256m, tmp_path):
    pristine = os.path.join(bench_chain_256m, "D.qcow2")
    moments = [0.0, 0.05, 0.15, 0.3, 0.45, 0.6, 0.8, 1.0, 1.3, 2.5]
    outcomes = set()
    for i, moment in enumerate(moments):
        chain = str(tmp_path / ("c%d" % i))
        run("cp", "-a", "--sparse=always", bench_chain_256m, chain)
        top = os.path.join(chain, "D.qcow2")
        child = subprocess.Popen([sys.executable, "-c", STREAMER % ROOT, top, str(150 * MiB)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "started"
        time.sleep(moment)
        child.send_signal(signal.SIGKILL)
        child.wait()
        for name in ("A", "B", "C", "D"):
            ok, text = check_clean(os.path.join(chain, name + ".qcow2"), leaks_ok=True)
            assert ok, (moment, name, text)
        backing = info(top).get("backing-filename")
        assert backing in ("C.qcow2", None), backing
        outcomes.add(backing)
        assert identical(top, pristine)[0], moment
        core = BlockCore()
        core.add_drive("virtio0", top)
        core.execute("block-stream", {"device": "virtio0"})
        assert core.wait_jobs(timeout=300)
        core.shutdown()
        assert "backing-filename" not in info(top)
        assert identical(top, pristine)[0], moment
        assert check_clean(top, leaks_ok=True)[0]   # the killed run may have leaked
        run("rm", "-rf", chain)
    assert "C.qcow2" in outcomes


def test_snapshot_and_stream_under_guest_writes_lose_nothing(tmp_path, qemu_img):
    """Live copy while a guest writes: every write lands, before or after the switch."""
    size = 16 * MiB
    top = make_chain(str(tmp_path), 16, 8, mid_data_mib=4)
    model_path, model = guest_model(tmp_path, top)
    core, _ = core_for(top)
    target = str(tmp_path / "copy.qcow2")
    stop = threading.Event()
    log = []

    def guest():
        rng = random.Random(3)
        while not stop.is_set():
            offset = rng.randrange(size - 4096)
            data = bytes([rng.randrange(1, 256)]) * rng.randrange(1, 4096)
            core.execute("x-blockmon-qemu-io", {"device": "virtio0", "command": "write -P %d %d %d" % (
                data[0], offset, len(data))})
            log.append((offset, data))

    writer = threading.Thread(target=guest)
    writer.start()
    try:
        time.sleep(0.2)
        core.execute("blockdev-snapshot-sync", {"device": "virtio0", "snapshot-file": target})
        time.sleep(0.2)
        core.execute("block-stream", {"device": "virtio0", "speed": 8 * MiB})
        assert core.wait_jobs(timeout=120)
    finally:
        stop.set()
        writer.join()
    core.shutdown()
    for offset, data in log:
        model[offset:offset + len(data)] = data
    save_model(model_path, model)
    assert len(log) > 50
    assert "backing-filename" not in info(target)
    assert check_clean(target)[0] and check_clean(top)[0]
    same, text = identical(target, model_path, "qcow2", "raw")
    assert same, text
