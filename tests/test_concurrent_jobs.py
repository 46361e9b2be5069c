"""Jobs on different devices, and on disjoint parts of one chain, run at the same time (issue 3)."""
import os
import subprocess

from commands.core import BlockCore
from tests.oracle import check_clean, identical, info

LAYERS = ["L1", "L2", "L3", "L4", "L5"]


def make_five_layer_chain(directory):
    """L1 <- L2 <- L3 <- L4 <- L5, 4 MiB, each layer writing its own MiB-sized band."""
    previous = None
    for index, name in enumerate(LAYERS):
        command = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if previous:
            command += ["-b", previous + ".qcow2", "-F", "qcow2"]
        subprocess.run(command + [name + ".qcow2", "4M"], cwd=directory, check=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P %d %dk 640k" % (0x30 + index, 512 * index),
                        name + ".qcow2"], cwd=directory, check=True, capture_output=True)
        previous = name
    pristine = os.path.join(directory, "pristine.raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", "L5.qcow2", pristine], cwd=directory, check=True)
    return pristine


def test_disjoint_parts_of_one_chain_stream_concurrently(tmp_path, qemu_img):
    d = str(tmp_path)
    pristine = make_five_layer_chain(d)
    core = BlockCore()
    core.add_drive("virtio0", os.path.join(d, "L5.qcow2"))
    # L3 <- streamed from L2 (base L1) and L5 <- streamed from L4 (base L3): they share no node
    core.execute("block-stream", {"device": "L3", "job-id": "low", "base": "L1", "speed": 1 << 20})
    core.execute("block-stream", {"device": "virtio0", "base": "L3", "speed": 1 << 20})
    running = {job["device"]: job["status"] for job in core.execute("query-block-jobs")}
    assert running == {"low": "running", "virtio0": "running"}
    busy = "Node 'L3' is busy: block device is in use by block job: stream"
    try:
        core.execute("block-stream", {"device": "L3", "job-id": "again"})
    except Exception as err:
        assert err.desc == busy
    else:
        raise AssertionError("a second job on L3 was accepted")
    core.execute("block-job-set-speed", {"device": "low", "speed": 0})
    core.execute("block-job-set-speed", {"device": "virtio0", "speed": 0})
    assert core.wait_jobs(timeout=120)
    core.shutdown()
    assert info(os.path.join(d, "L3.qcow2"))["backing-filename"] == "L1.qcow2"
    assert info(os.path.join(d, "L5.qcow2"))["backing-filename"] == "L3.qcow2"
    assert identical(os.path.join(d, "L5.qcow2"), pristine, "qcow2", "raw")[0]
    for name in LAYERS:
        assert check_clean(os.path.join(d, name + ".qcow2"))[0]


def test_jobs_on_two_devices_run_together(tmp_path, qemu_img):
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    pristines = [make_five_layer_chain(str(first)), make_five_layer_chain(str(second))]
    core = BlockCore()
    core.add_drive("virtio0", str(first / "L5.qcow2"))
    core.add_drive("ide0-hd0", str(second / "L5.qcow2"))
    core.execute("block-stream", {"device": "virtio0", "speed": 1 << 20})
    core.execute("block-stream", {"device": "ide0-hd0", "speed": 1 << 20})
    assert sorted(core.job_ids()) == ["ide0-hd0", "virtio0"]
    for job in ("virtio0", "ide0-hd0"):
        core.execute("block-job-set-speed", {"device": job, "speed": 0})
    assert core.wait_jobs(timeout=120)
    core.shutdown()
    for directory, pristine in zip((first, second), pristines):
        top = str(directory / "L5.qcow2")
        assert "backing-filename" not in info(top)
        assert identical(top, pristine, "qcow2", "raw")[0]
