"""Helpers for the commit tests: a blockmon process serving a chain over QMP, and the
qemu-img oracle's view of what a merge writes.

``Blockmon`` runs ``python -m monitor`` (the CLI users run) with ``-qmp`` on a unix
socket; the test talks to it with qemu.qmp's synchronous client and reads HMP
through ``human-monitor-command``.  Waits only bound a hang.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from tests.conftest import ROOT, run
import json

WAIT = 120.0


def copy_chain(source, target):
    run("cp", "-a", "--sparse=always", source, target)
    return target


class Blockmon:
    """blockmon serving ``drives`` (``-drive`` specs) on a QMP socket."""

    def __init__(self, drives, cwd):
        from qemu.qmp.legacy import QEMUMonitorProtocol
        from qemu.qmp.protocol import ConnectError
        self.directory = tempfile.mkdtemp(prefix="bm-", dir="/tmp")
        self.path = os.path.join(self.directory, "qmp.sock")
        argv = [sys.executable, "-m", "monitor"]
        for drive in drives:
            argv += ["-drive", drive]
        argv += ["-qmp", "unix:%s,server=on,wait=off" % self.path]
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=dict(os.environ, PYTHONPATH=ROOT))
        deadline = time.monotonic() + WAIT
        while True:
            try:
                if os.path.exists(self.path):
                    self.qmp = QEMUMonitorProtocol(self.path)
                    self.qmp.connect(negotiate=True)
                    break
            except (OSError, ConnectError):
                pass
            assert self.proc.poll() is None, self.proc.stderr.read()
            assert time.monotonic() < deadline, "blockmon never served QMP"
            time.sleep(0.05)
        self.qmp.settimeout(WAIT)
        self.events = []

    def cmd(self, name, **arguments):
        return self.qmp.cmd_raw(name, arguments or None)

    def ok(self, name, **arguments):
        reply = self.cmd(name, **arguments)
        assert "return" in reply, reply
        return reply["return"]

    def hmp(self, line):
        return self.ok("human-monitor-command", **{"command-line": line}).replace("\r\n", "\n")

    def pull(self):
        self.events += self.qmp.get_events(wait=False)     # takes them off the queue
        return self.events

    def wait_event(self, predicate):
        """Events until one matches ``predicate``; returns it."""
        deadline = time.monotonic() + WAIT
        while True:
            for event in self.pull():
                if predicate(event):
                    return event
            assert time.monotonic() < deadline, "event never came: %r" % self.events
            try:
                event = self.qmp.pull_event(wait=1.0)
            except TimeoutError:        # nothing within a second: look again
                continue
            if event is not None:
                self.events.append(event)

    def sequence(self, job_id):
        """The job's events: statuses and event names, with the data of BLOCK_JOB_*."""
        out = []
        for event in self.pull():
            data = event["data"]
            if job_id not in (data.get("id"), data.get("device")):
                continue
            out.append(data["status"] if event["event"] == "JOB_STATUS_CHANGE"
                       else (event["event"], data))
        return out

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def close(self):
        if self.qmp is None:
            return
        if self.proc.poll() is None:
            try:
                self.qmp.cmd_raw("quit")
            except Exception:      # already gone: nothing to ask
                pass
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.kill()
        try:
            self.qmp.close()
        except Exception:          # the server went first
            pass
        self.qmp = None
        self.proc.stdout.close()
        self.proc.stderr.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def ended(job_id):
    return lambda e: e["event"] == "JOB_STATUS_CHANGE" and e["data"] == {"id": job_id, "status": "null"}


def written_by_merge(top_path, base_depth):
    """(stream bytes, commit bytes) by qemu-img map of the chain: a stream onto the
    layer at ``base_depth`` writes what layers 1..base_depth-1 decide, a commit what
    layers 0..base_depth-1 decide (zero ranges included)."""
    stream = commit = 0
    # -U: blockmon may hold the image open (and locked) meanwhile, as QEMU would
    out = run("qemu-img", "map", "-U", "--output=json", top_path).stdout
    for extent in json.loads(out):
        if extent["present"] and extent["depth"] < base_depth:
            commit += extent["length"]
            if extent["depth"] > 0:
                stream += extent["length"]
    return stream, commit
