"""A real blockmon process for tests: ``python -m monitor`` with a QMP socket, a small chain.

``Blockmon(directory, drive_args, ...)`` starts the CLI as users do (standard input a
pipe held open unless told otherwise) and ``qmp()`` connects a raw event-keeping
client.  ``small_chain`` builds ``base <- top`` with qemu-img and qemu-io.
"""
import os
import subprocess
import sys
import time

from qmp_clients import QmpEventClient, remove_tree, short_tempdir
from tests.conftest import ROOT, connect_when_listening

MiB = 1 << 20
LONG = 60


def small_chain(directory, size_mib=4, base_data_mib=4, base_format="qcow2"):
    """base <- top, the base filled with 0x61 over its first ``base_data_mib`` MiB."""
    def tool(*argv):
        subprocess.run(list(argv), cwd=directory, check=True, capture_output=True)
    base = "base." + base_format
    tool("qemu-img", "create", "-f", base_format, base, "%dM" % size_mib)
    if base_data_mib:
        tool("qemu-io", "-f", base_format, "-c", "write -P 0x61 0 %dM" % base_data_mib, base)
    tool("qemu-img", "create", "-f", "qcow2", "-b", base, "-F", base_format, "top.qcow2",
         "%dM" % size_mib)
    return os.path.join(directory, "top.qcow2")


class Blockmon:
    """One blockmon process serving QMP (and with ``monitor``, HMP) on unix sockets."""

    def __init__(self, arguments, stdin=subprocess.PIPE, monitor=False):
        self.directory = short_tempdir()
        self.qmp_path = os.path.join(self.directory, "qmp.sock")
        self.hmp_path = os.path.join(self.directory, "hmp.sock")
        argv = [sys.executable, "-m", "monitor", *arguments,
                "-qmp", "unix:%s,server=on,wait=off" % self.qmp_path]
        if monitor:
            argv += ["-monitor", "unix:%s,server=on,wait=off" % self.hmp_path]
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=stdin, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)

    def qmp(self, negotiate=True):
        connect_when_listening(self.qmp_path, time.monotonic() + LONG).close()
        client = QmpEventClient(self.qmp_path, negotiate=negotiate)
        client.sock.settimeout(LONG)
        return client

    def wait(self):
        """The exit status, stdout and stderr once the process ends (stdin stays open)."""
        status = self.proc.wait(timeout=LONG)
        return status, self.proc.stdout.read().decode(), self.proc.stderr.read().decode()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        remove_tree(self.directory)
