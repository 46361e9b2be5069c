"""The throughput shown for a speed-limited stream is the rate of bytes really copied, next to
the limit; progress (percent, bytes) counts skipped ranges, as QEMU's offset does."""
import re
import subprocess
import sys
import time

from commands.core import BlockCore
from monitor.progress import ThroughputMeter
from monitor.toolbar import JobsToolbar
from tests.conftest import run
from test_terminal import ROOT, Tmux, tmux_required  # noqa: F401  (the fixture skips without tmux)

MiB = 1 << 20


def sparse_chain(directory, size_mib, data_every_mib=4, data_kib=512):
    """base (data_kib of data at the start of every data_every_mib MiB) <- top."""
    base, top = str(directory / "base.qcow2"), str(directory / "top.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", base, "%dM" % size_mib)
    writes = ["write -P 0x61 %dM %dk" % (start, data_kib)
              for start in range(0, size_mib, data_every_mib)]
    argv = ["qemu-io", "-f", "qcow2"]
    for command in writes:
        argv += ["-c", command]
    run(*argv, base)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top,
        "%dM" % size_mib)
    return top, len(writes) * data_kib * 1024


def test_the_job_counts_the_bytes_it_copied(tmp_path, qemu_img):
    top, data = sparse_chain(tmp_path, 32)
    core = BlockCore()
    try:
        core.add_drive("virtio0", top)
        core.execute("block-stream", {"device": "virtio0"})
        (job,) = core.jobs()
        assert core.wait_jobs(timeout=120)
        assert (job.offset, job.copied) == (32 * MiB, data)
    finally:
        core.shutdown()


class OneJobCore:
    """query-block-jobs and the job objects, as the toolbar reads them from a BlockCore."""

    class Job:
        id = "virtio0"
        copied = 0

    def __init__(self):
        self.job = self.Job()
        self.info = {"type": "stream", "device": "virtio0", "len": 64 * MiB, "offset": 0,
                     "busy": True, "paused": False, "speed": MiB, "io-status": "ok",
                     "ready": False, "status": "running", "auto-finalize": True,
                     "auto-dismiss": True}

    def execute(self, name, arguments=None):
        assert name == "query-block-jobs"
        return [dict(self.info)]

    def jobs(self):
        return [self.job]


def test_toolbar_rate_is_of_copied_bytes_and_eta_of_progress():
    now = [0.0]
    core = OneJobCore()
    toolbar = JobsToolbar(core, ThroughputMeter(clock=lambda: now[0]), width=lambda: 140)
    toolbar.text()
    now[0] = 2.0
    core.info["offset"], core.job.copied = 16 * MiB, 2 * MiB      # 3/4 of the range skipped
    line = re.sub(r"\x1b\[[0-9;]*m", "", toolbar.text())
    # 25%, 16 of 64 MiB as QEMU counts; 1 MiB/s copied beside the 1 MiB/s limit; the ETA
    # from progress (48 MiB left at 8 MiB/s).
    assert re.search(r" 25% +16\.0 MiB/64\.0 MiB +1\.0 MiB/s +ETA 0:00:06 +limit 1\.0 MiB/s ", line), line


def toolbar_rate(screen):
    match = re.search(r"^virtio0 .*?(\d+\.\d) (KiB|MiB)/s +ETA \S+ +limit 1\.0 MiB/s", screen, re.M)
    if not match:
        return None
    return float(match.group(1)) * (1024 if match.group(2) == "KiB" else MiB)


def percent(screen):
    match = re.search(r"^virtio0 .*?(\d+)% ", screen, re.M)
    return int(match.group(1)) if match else None


def test_console_toolbar_under_a_speed_limit_over_a_sparse_chain(tmp_path, qemu_img):
    # One eighth of the chain holds data: progress runs at about 8 MiB/s under a 1 MiB/s
    # limit, and the toolbar must show the copy rate, not that.
    top, _ = sparse_chain(tmp_path, 256)
    # COLUMNS: the pane's width, whatever the test runner exported (the limit must fit)
    term = Tmux([sys.executable, "-m", "monitor", top],
                {"XDG_STATE_HOME": str(tmp_path / "state"), "PYTHONPATH": ROOT, "TERM": "xterm-256color",
                 "COLUMNS": "150", "LINES": "40"})
    try:
        term.wait(lambda s: "(qemu)" in s, "the prompt")
        term.keys("block_stream virtio0 1M", "Enter")
        term.wait(toolbar_rate, "a rate in the toolbar")
        # A few seconds of samples behind the figure: the rate window is full.
        term.wait(lambda s: (percent(s) or 0) >= 12, "progress")
        rates = []
        for _ in range(3):
            rates.append(term.wait(toolbar_rate, "a rate"))
            time.sleep(1)
        assert max(rates) < 2 * MiB, term.screen()
        term.keys("C-d")
        term.wait(lambda s: term.dead(), "blockmon to leave")
    finally:
        term.close()
    assert subprocess.run(["qemu-img", "check", top], capture_output=True).returncode == 0
