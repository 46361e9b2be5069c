"""The timed operations: blockmon and its peers (QEMU 7.2, qemu-img, a plain copy) on fresh chain copies.

Each function takes a fresh chain directory, warms memory right before the clock
starts (see bench/touch_ram.py: idle memory is handed back to the host and is
slow to touch again), and returns a dict of measurements in seconds / bytes.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

from .qmp_wire import QmpWire
from .touch_ram import touch_ram

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def qemu_system():
    return shutil.which("qemu-system-x86_64")


def peak_rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _socket_path():
    return os.path.join(tempfile.mkdtemp(prefix="bench-qmp-"), "qmp.sock")


def _stream_arguments(base):
    arguments = {"device": "virtio0"}
    if base:
        arguments["base"] = base
    return arguments


def blockmon_stream(chain_dir, warm_gib, base=None):
    """blockmon driven over QMP: command to BLOCK_JOB_COMPLETED (its data is durable by then)."""
    sock = _socket_path()
    drive = "file=%s,if=none,id=virtio0" % os.path.join(chain_dir, "D.qcow2")
    log = tempfile.TemporaryFile(mode="w+")     # shown only when the run fails
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "-drive", drive,
                             "-qmp", "unix:%s,server=on,wait=off" % sock],
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        qmp = QmpWire(sock)
        touch_ram(warm_gib)
        start = time.perf_counter()
        qmp.execute("block-stream", _stream_arguments(base))
        event = qmp.wait_event("BLOCK_JOB_COMPLETED")
        elapsed = time.perf_counter() - start
        if "error" in event["data"]:
            raise RuntimeError("blockmon stream failed: %s" % event["data"]["error"])
        rss = peak_rss(proc.pid)
        qmp.send("quit")
        proc.wait(timeout=60)
        qmp.close()
        return {"event": elapsed, "rss": rss}
    except BaseException:
        log.seek(0)
        sys.stderr.write("blockmon output:\n" + log.read())
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def qemu_stream(chain_dir, warm_gib, base=None):
    """QEMU 7.2: command to its event, and to its event plus quit (the flush that makes it durable)."""
    sock = _socket_path()
    proc = subprocess.Popen([qemu_system(), "-machine", "none", "-nodefaults", "-display", "none", "-S",
                             "-drive", "if=none,id=virtio0,file=%s,format=qcow2"
                             % os.path.join(chain_dir, "D.qcow2"),
                             "-qmp", "unix:%s,server=on,wait=off" % sock],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        qmp = QmpWire(sock)
        touch_ram(warm_gib)
        start = time.perf_counter()
        qmp.execute("block-stream", _stream_arguments(base))
        qmp.wait_event("BLOCK_JOB_COMPLETED")
        event = time.perf_counter() - start
        qmp.send("quit")
        proc.wait(timeout=120)
        durable = time.perf_counter() - start
        qmp.close()
        return {"event": event, "durable": durable}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def qemu_img_rebase(chain_dir, warm_gib):
    touch_ram(warm_gib)
    start = time.perf_counter()
    subprocess.run(["qemu-img", "rebase", "-f", "qcow2", "-b", "", os.path.join(chain_dir, "D.qcow2")],
                   check=True)
    return {"time": time.perf_counter() - start}


def plain_copy(chain_dir, warm_gib, nbytes):
    """dd of nbytes from A.qcow2 with fdatasync: the bound for moving that many bytes durably."""
    source = os.path.join(chain_dir, "A.qcow2")
    nbytes = min(nbytes, os.path.getsize(source))
    target = os.path.join(chain_dir, "copy.bin")
    touch_ram(warm_gib)
    start = time.perf_counter()
    subprocess.run(["dd", "if=" + source, "of=" + target, "bs=4M", "iflag=count_bytes",
                    "count=%d" % nbytes, "conv=fdatasync", "status=none"], check=True)
    return {"time": time.perf_counter() - start, "bytes": nbytes}


def blockmon_startup():
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "monitor", "-c", "quit"], cwd=ROOT, check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return {"time": time.perf_counter() - start}


def guest_latency(chain_dir, warm_gib):
    """p50/p99 of 4 KiB guest writes, idle and during a full-speed stream (in a child process)."""
    out = subprocess.run([sys.executable, "-m", "bench.latency", os.path.join(chain_dir, "D.qcow2"),
                          "%.2f" % warm_gib],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    values = dict(line.split("=") for line in out.split())
    return {key: float(value) for key, value in values.items()}
