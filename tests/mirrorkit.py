"""Helpers for the mirror tests: a small chain, a core with an event list, waits on job states."""
import os
import shutil
import subprocess
import time

from commands.core import BlockCore
from commands.errors import CommandError, qmp_error
from commands.hmp import HmpInterpreter
from images.errors import BlockError

MiB = 1 << 20
WAIT = 120.0        # only a guard against hanging


def qemu_img(directory, *args):
    subprocess.run(["qemu-img", *args], cwd=directory, check=True, capture_output=True)


def qemu_io(path, command, fmt="qcow2"):
    subprocess.run(["qemu-io", "-f", fmt, "-c", command, path], check=True, capture_output=True)


def small_chain(directory, size_mib=16):
    """base <- mid <- top (relative names): 4 MiB of 0x61 in base, 2 MiB of 0x62 at 1M in
    mid, 1 MiB of 0x63 at 8M plus a zeroed cluster at 12M in top."""
    qemu_img(directory, "create", "-f", "qcow2", "base.qcow2", "%dM" % size_mib)
    qemu_img(directory, "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2",
             "%dM" % size_mib)
    qemu_img(directory, "create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2",
             "%dM" % size_mib)
    qemu_io(os.path.join(directory, "base.qcow2"), "write -P 0x61 0 4M")
    qemu_io(os.path.join(directory, "mid.qcow2"), "write -P 0x62 1M 2M")
    qemu_io(os.path.join(directory, "top.qcow2"), "write -P 0x63 8M 1M")
    qemu_io(os.path.join(directory, "top.qcow2"), "write -z 12M 64k")
    return os.path.join(directory, "top.qcow2")


TOP_ALLOCATED = MiB + 64 * 1024          # what sync=top copies from small_chain's top
CHAIN_ALLOCATED = 4 * MiB + MiB + 64 * 1024   # what sync=full copies (base covers mid's band)


class Session:
    """A BlockCore with virtio0 = ``top``, its events, and an HMP interpreter."""

    def __init__(self, top):
        self.core = BlockCore()
        self.core.add_drive("virtio0", top)
        self.events = []
        self.core.events.subscribe(self.events.append)
        self.hmp = HmpInterpreter(self.core)

    def qmp(self, name, args=None):
        """The command's return value, or its QMP error object."""
        try:
            return self.core.execute(name, args or {})
        except (CommandError, BlockError) as err:
            return {"error": qmp_error(err)}

    def run(self, line):
        return self.hmp.run_line(line).output

    def trace(self):
        """Event names, JOB_STATUS_CHANGE as its status; then forget them."""
        names = [e["data"]["status"] if e["event"] == "JOB_STATUS_CHANGE" else e["event"]
                 for e in self.events]
        del self.events[:]
        return names

    def event_data(self, name):
        return [e["data"] for e in self.events if e["event"] == name]

    def job(self, job_id="virtio0"):
        jobs = [j for j in self.core.execute("query-block-jobs") if j["device"] == job_id]
        return jobs[0] if jobs else None

    def wait_status(self, status, job_id="virtio0"):
        deadline = time.monotonic() + WAIT
        while True:
            job = self.job(job_id)
            if job is not None and job["status"] == status:
                return job
            assert time.monotonic() < deadline, "job %s never %s: %r" % (job_id, status, job)
            time.sleep(0.005)

    def wait_gone(self):
        assert self.core.wait_jobs(timeout=WAIT)

    def close(self):
        self.core.shutdown()


def copy_file(path, to):
    shutil.copyfile(path, to)
    return to


def info_shared(path):
    """qemu-img info -U: the image may be held (locked) by a live session."""
    import json
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def check_shared(path, leaks_ok=False):
    """qemu-img check -U, as tests.oracle.check_clean."""
    result = subprocess.run(["qemu-img", "check", "-U", "-f", "qcow2", path], capture_output=True,
                            text=True)
    allowed = (0, 3) if leaks_ok else (0,)
    return result.returncode in allowed and "ERROR" not in result.stdout, result.stdout + result.stderr


def identical_shared(path_a, path_b, fmt_a="qcow2", fmt_b="qcow2"):
    from tests.oracle import identical
    return identical(path_a, path_b, fmt_a, fmt_b, force_share=True)
