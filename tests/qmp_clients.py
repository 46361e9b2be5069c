"""Clients for the monitor sockets in tests: line-level QMP and HMP clients, an event
reader, qmp-shell, and short socket directories.  The fake core is tests/fake_core.py."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

from fake_core import TIMEOUT


def short_tempdir():
    """A directory whose socket paths fit in sun_path (108 bytes)."""
    return tempfile.mkdtemp(prefix="bm-", dir="/tmp")


def remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)


class LineClient:
    """A blocking socket client reading CRLF-terminated lines, with a timeout on every read."""

    def __init__(self, path=None, address=None):
        if path is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(TIMEOUT)
            self.sock.connect(path)
        else:
            self.sock = socket.create_connection(address, timeout=TIMEOUT)
        self.buffer = b""

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def read_line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed; unread: %r" % self.buffer[:200])
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line + b"\n"

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed; unread: %r" % self.buffer[:200])
            self.buffer += chunk
        end = self.buffer.index(marker) + len(marker)
        data, self.buffer = self.buffer[:end], self.buffer[end:]
        return data

    def read_json(self):
        return json.loads(self.read_line())

    def close(self):
        self.sock.close()


class QmpLineClient(LineClient):
    def __init__(self, path=None, address=None, negotiate=True):
        super().__init__(path, address)
        self.greeting = self.read_json()
        if negotiate:
            assert self.cmd("qmp_capabilities") == {"return": {}}

    def cmd(self, name, arguments=None, **extra):
        request = {"execute": name}
        if arguments is not None:
            request["arguments"] = arguments
        request.update(extra)
        self.send(json.dumps(request))
        return self.read_reply()

    def read_reply(self):
        return self.read_json()


def socket_mode(path):
    return os.stat(path).st_mode & 0o777


class QmpEventClient(QmpLineClient):
    """A raw QMP client that keeps events apart from replies, for event-sequence tests."""

    def __init__(self, path=None, address=None, negotiate=True):
        self.events = []
        super().__init__(path, address, negotiate)

    def read_reply(self):
        while True:
            message = self.read_json()
            if "event" in message:
                self.events.append(message)
            else:
                return message

    def wait_event(self, predicate, limit=100000):
        """Read until an event matching predicate arrives (bounded by the socket timeout)."""
        for event in self.events:
            if predicate(event):
                return event
        for _ in range(limit):
            message = self.read_json()
            if "event" not in message:
                raise AssertionError("unexpected reply while waiting for an event: %r" % message)
            self.events.append(message)
            if predicate(message):
                return message
        raise AssertionError("no matching event in %d messages" % limit)


def job_ended(job_id):
    return lambda e: e["event"] == "JOB_STATUS_CHANGE" and e["data"] == {"id": job_id, "status": "null"}


def without_timestamps(events, job_id=None):
    """(event, data) pairs, optionally only those about one job."""
    pairs = [(e["event"], e["data"]) for e in events]
    if job_id is None:
        return pairs
    return [(name, data) for name, data in pairs if job_id in (data.get("id"), data.get("device"))]


def qmp_shell_command():
    """qmp-shell's console script, or the module when only the library is importable."""
    script = shutil.which("qmp-shell") or os.path.join(os.path.dirname(sys.executable), "qmp-shell")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from qemu.qmp.qmp_shell import main; main()"]


def run_qmp_shell(path, lines, *options, home):
    environment = dict(os.environ, HOME=str(home))      # it writes ~/.qmp-shell_history
    return subprocess.run(qmp_shell_command() + list(options) + [path], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, timeout=60, env=environment)
