"""What the NBD tests share: a small chain built with qemu-img/qemu-io, blockmon as a
storage daemon (``python -m monitor --nbd-server ... --export ...``), and qemu-nbd
serving a copy of the same chain, so each client can be run against both."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

from conftest import ROOT, require_qemu, require_tool, run

SIZE = 16 * 1024 * 1024
START_TIMEOUT = 60


def build_chain(directory):
    """A.qcow2 <- D.qcow2 (16 MiB, 64 KiB clusters): data in both layers, a zero
    cluster in D over A's data, holes everywhere else.  Returns D's path."""
    require_qemu()
    a, d = os.path.join(directory, "A.qcow2"), os.path.join(directory, "D.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", a, str(SIZE))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0xa1 0 1M", "-c", "write -P 0xa2 3M 1M",
        "-c", "write -P 0xa3 8M 64K", a)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "A.qcow2", "-F", "qcow2", d)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0xd4 512K 1M", "-c", "write -z 3M 128K",
        "-c", "write -P 0xd5 12M 4K", d)
    return d


def copy_chain(source_dir, target_dir):
    os.makedirs(target_dir, exist_ok=True)
    for name in ("A.qcow2", "D.qcow2"):
        shutil.copyfile(os.path.join(source_dir, name), os.path.join(target_dir, name))
    return os.path.join(target_dir, "D.qcow2")


def wait_for_socket(path, process=None):
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError("server exited: %s" % (process.stderr.read() if process.stderr else ""))
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
            return
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.05)
        finally:
            probe.close()
    raise AssertionError("nobody listens on %s" % path)


def uri(sock, name):
    return "nbd+unix:///%s?socket=%s" % (name, sock)


class Blockmon:
    """blockmon serving ``top`` as device virtio0, NBD on ``sock``, QMP on ``qmp``."""

    def __init__(self, top, directory, exports=("type=nbd,id=D,node-name=virtio0,name=D,writable=on",),
                 extra=()):
        self.sock = os.path.join(directory, "nbd.sock")
        self.qmp_path = os.path.join(directory, "qmp.sock")
        argv = [sys.executable, "-m", "monitor", "-drive", "file=%s,if=virtio" % top,
                "--nbd-server", "addr.type=unix,addr.path=%s" % self.sock,
                "-qmp", "unix:%s,server=on,wait=off" % self.qmp_path]
        for export in exports:
            argv += ["--export", export]
        self.process = subprocess.Popen(argv + list(extra), cwd=ROOT, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_socket(self.sock, self.process)
        wait_for_socket(self.qmp_path, self.process)

    def uri(self, name="D"):
        return uri(self.sock, name)

    def qmp(self):
        from bench.qmp_wire import QmpWire
        return QmpWire(self.qmp_path)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
        out, err = self.process.communicate(timeout=60)
        return self.process.returncode, out, err


class QemuNbd:
    """qemu-nbd serving ``top`` (a copy of the same chain) on a unix socket."""

    def __init__(self, top, directory, read_only=False, allocation_depth=False, shared=8):
        require_tool("qemu-nbd", "qemu-utils")
        self.sock = os.path.join(directory, "qemu-nbd.sock")
        argv = ["qemu-nbd", "-t", "-f", "qcow2", "-x", "D", "-k", self.sock, "--shared=%d" % shared]
        if read_only:
            argv.append("-r")
        if allocation_depth:
            argv.append("-A")
        self.process = subprocess.Popen(argv + [top], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        wait_for_socket(self.sock, self.process)

    def uri(self, name="D"):
        return uri(self.sock, name)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


def qemu_img_map(target):
    return json.loads(run("qemu-img", "map", "--output=json", "-f", "raw", target).stdout)
