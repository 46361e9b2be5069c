"""Guest write latency over NBD while a full-speed stream runs: blockmon, or
qemu-storage-daemon 7.2 with the same chain, the same export and the same client.

    python -m bench.nbd_latency --chain DIR [--server blockmon|qemu-storage-daemon]

The chain in DIR (top ``D.qcow2``) is copied first: the stream rewrites the top.
The client is a minimal NBD client (``NbdWriter``: fixed newstyle, ``NBD_OPT_GO``,
simple replies) that times each 4 KiB ``NBD_CMD_WRITE`` at a random 4 KiB-aligned
offset from request sent to reply received, with a 1 ms pause between writes (a
guest issuing writes, not a tight loop): first 500 idle, then for as long as
``block-stream`` (no speed limit) runs.  Prints idle and stream p50/p99 in ms.
"""
import argparse
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

from .qmp_wire import QmpWire

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IHAVEOPT = 0x49484156454F5054
OPTION_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
NBD_OPT_GO, NBD_REP_ACK = 7, 1
NBD_CMD_WRITE, NBD_CMD_DISC = 1, 2
WRITE = b"\x5a" * 4096


class NbdWriter:
    """One NBD connection that writes and waits for each reply."""

    def __init__(self, path, name):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.sock.settimeout(60)
        magic, option_magic, _ = struct.unpack(">QQH", self._recv(18))
        assert magic == 0x4E42444D41474943 and option_magic == IHAVEOPT
        self.sock.sendall(struct.pack(">I", 1 | 2))     # FIXED_NEWSTYLE, NO_ZEROES
        data = struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0)
        self.sock.sendall(struct.pack(">QII", IHAVEOPT, NBD_OPT_GO, len(data)) + data)
        while True:
            magic, _, kind, length = struct.unpack(">QIII", self._recv(20))
            self._recv(length)
            if kind & 0x80000000:
                raise RuntimeError("NBD_OPT_GO refused (%#x)" % kind)
            if kind == NBD_REP_ACK:
                break
        self.cookie = 0

    def _recv(self, n):
        data = b""
        while len(data) < n:
            got = self.sock.recv(n - len(data))
            if not got:
                raise EOFError("the server closed the connection")
            data += got
        return data

    def write(self, offset, data):
        self.cookie += 1
        self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, NBD_CMD_WRITE, self.cookie,
                                      offset, len(data)) + data)
        magic, error, cookie = struct.unpack(">IIQ", self._recv(16))
        if magic != SIMPLE_REPLY_MAGIC or error or cookie != self.cookie:
            raise RuntimeError("write at %d failed: error %d" % (offset, error))

    def close(self):
        self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, NBD_CMD_DISC, 0, 0, 0))
        self.sock.close()


def percentile(samples, fraction):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def timed_writes(client, size, rng, count=None, while_true=None):
    samples, blocks = [], size // 4096
    while (count is not None and len(samples) < count) or (while_true is not None and while_true()):
        offset = rng.randrange(blocks) * 4096
        start = time.perf_counter()
        client.write(offset, WRITE)
        samples.append(time.perf_counter() - start)
        time.sleep(0.001)
    return samples


def start_server(kind, top, work):
    sock, qmp = os.path.join(work, "nbd.sock"), os.path.join(work, "qmp.sock")
    export = "type=nbd,id=D,node-name=virtio0,name=D,writable=on"
    if kind == "blockmon":
        argv = [sys.executable, "-m", "monitor", "-drive", "file=%s,if=virtio" % top,
                "-qmp", "unix:%s,server=on,wait=off" % qmp]
    else:
        argv = ["qemu-storage-daemon", "--blockdev",
                "driver=file,filename=%s,node-name=file0" % top, "--blockdev",
                "driver=qcow2,file=file0,node-name=virtio0", "--chardev",
                "socket,path=%s,server=on,wait=off,id=qmp0" % qmp, "--monitor", "chardev=qmp0"]
    argv += ["--nbd-server", "addr.type=unix,addr.path=%s" % sock, "--export", export]
    process = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return process, sock, qmp


def measure(kind, chain, work):
    """{'idle_p50', 'idle_p99', 'stream_p50', 'stream_p99'} in seconds, 'stream_writes'."""
    copy = tempfile.mkdtemp(dir=work, prefix="latency-")
    subprocess.run(["cp", "-a", "--sparse=always"] + [os.path.join(chain, name) for name in
                                                      os.listdir(chain)] + [copy], check=True)
    size = _virtual_size(os.path.join(copy, "D.qcow2"))     # before the server locks it
    process, sock, qmp_path = start_server(kind, os.path.join(copy, "D.qcow2"), copy)
    try:
        qmp = QmpWire(qmp_path)
        wait_socket(sock, process)
        client = NbdWriter(sock, "D")
        rng = random.Random(1)
        idle = timed_writes(client, size, rng, count=500)
        qmp.execute("block-stream", {"job-id": "stream0", "device": "virtio0"})
        during = timed_writes(client, size, rng, while_true=JobWatch(qmp))
        client.close()
        qmp.execute("quit")
        qmp.close()
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(copy, ignore_errors=True)
    return {"idle_p50": percentile(idle, 0.5), "idle_p99": percentile(idle, 0.99),
            "stream_p50": percentile(during or [0], 0.5),
            "stream_p99": percentile(during or [0], 0.99), "stream_writes": len(during)}


def _virtual_size(path):
    info = subprocess.run(["qemu-img", "info", "--output=json", path], check=True,
                          capture_output=True, text=True).stdout
    return json.loads(info)["virtual-size"]


def wait_socket(path, process):
    """Return once ``path`` accepts a connection; RuntimeError if ``process`` exits first."""
    while True:
        if process.poll() is not None:
            raise RuntimeError("server exited: %s" % process.stderr.read())
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
            return
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.05)
        finally:
            probe.close()


class JobWatch:
    """True while a block job runs; asks QMP at most every 50 ms (the probe is load too)."""

    def __init__(self, qmp):
        self.qmp = qmp
        self.checked = 0.0
        self.running = True

    def __call__(self):
        now = time.monotonic()
        if self.running and now - self.checked >= 0.05:
            self.checked = now
            self.running = bool(self.qmp.execute("query-block-jobs"))
        return self.running


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chain", required=True)
    parser.add_argument("--server", default="blockmon",
                        choices=("blockmon", "qemu-storage-daemon"))
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="nbd-latency-")
    try:
        result = measure(args.server, args.chain, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(" ".join("%s=%s" % (k, ("%.2fms" % (v * 1e3)) if isinstance(v, float) else v)
                   for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
