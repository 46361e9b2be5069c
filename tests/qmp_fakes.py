"""Test doubles for the monitor servers: a FakeCore, a fake HMP interpreter, socket clients.

FakeCore answers a few QMP-shaped commands the way commands/core.py will, so the
socket layer can be tested before (and independently of) the real core:
``x-slow`` blocks until ``gate`` is set, ``x-echo`` returns its arguments,
``x-bug`` raises a non-command exception, ``x-emit`` publishes an event.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from typing import NamedTuple

from commands.errors import COMMAND_NOT_FOUND, DEVICE_NOT_ACTIVE, CommandError
from images.events import EventBus

VERSION = {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "blockmon 0.1.0"}
TIMEOUT = 10
COMMANDS = ["qmp_capabilities", "query-version", "query-commands", "query-block-jobs",
            "block-job-pause", "human-monitor-command", "quit"]
HMP_ANSWERS = {
    "info block-jobs": "No active jobs\r\n",
    "help": "block_job_pause device -- pause an active background block operation\r\n"
            "info [subcommand] -- show various information about the system state\r\n"
            "quit|q  -- quit the emulator\r\n",
    "info": "info block-jobs  -- show progress of ongoing block device operations\r\n"
            "info version  -- show the version of QEMU\r\n",
    "block_job_pause j1": "Error: Block job 'j1' not found\r\n",
}


class FakeCore:
    def __init__(self):
        self.events = EventBus()
        self.quit_requested = False
        self.gate = threading.Event()
        self.slow_started = threading.Event()
        self.slow_finished = threading.Event()
        self.calls = []

    def execute(self, name, arguments=None):
        arguments = dict(arguments or {})
        self.calls.append(name)
        if name == "query-version":
            return json.loads(json.dumps(VERSION))
        if name == "query-block-jobs":
            return []
        if name == "block-job-pause":
            _check(arguments, {"device": str})
            raise CommandError("Block job '%s' not found" % arguments["device"], DEVICE_NOT_ACTIVE)
        if name == "query-commands":
            return [{"name": n} for n in COMMANDS]
        if name == "human-monitor-command":
            arguments.setdefault("cpu-index", 0)     # qmp-shell -H always sends it
            _check(arguments, {"command-line": str, "cpu-index": int})
            return HMP_ANSWERS.get(arguments["command-line"],
                                   "unknown command: '%s'\r\n" % arguments["command-line"])
        if name == "x-slow":
            self.slow_started.set()
            self.gate.wait(TIMEOUT)
            self.slow_finished.set()
            return {}
        if name == "x-echo":
            return arguments
        if name == "x-bug":
            raise RuntimeError("boom")
        if name == "x-emit":
            self.events.publish(arguments["event"], arguments.get("data", {}))
            return {}
        if name == "quit":
            self.quit_requested = True
            return {}
        raise CommandError("The command %s has not been found" % name, COMMAND_NOT_FOUND)


def _check(arguments, schema):
    for key, kind in schema.items():
        if key not in arguments:
            raise CommandError("Parameter '%s' is missing" % key)
        if not isinstance(arguments[key], kind):
            raise CommandError("Invalid parameter type for '%s', expected: %s"
                               % (key, "string" if kind is str else "integer"))
    for key in arguments:
        if key not in schema:
            raise CommandError("Parameter '%s' is unexpected" % key)


class HmpResult(NamedTuple):
    output: str
    ok: bool = True
    quit: bool = False


class FakeInterpreter:
    """Stands in for commands.hmp.HmpInterpreter."""

    def __init__(self, core):
        self.core = core

    def run_line(self, line):
        words = line.split()
        if words == ["info", "block-jobs"]:
            return HmpResult("No active jobs\n")
        if words == ["info", "two"]:
            return HmpResult("line one\nline two\n")
        if words == ["nonl"]:
            return HmpResult("no newline")
        if words == ["bug"]:
            raise RuntimeError("interpreter bug")
        if words and words[0] in ("quit", "q"):
            self.core.quit_requested = True
            return HmpResult("", quit=True)
        if words and words[0] == "block_job_pause":
            return HmpResult("", ok=True)
        return HmpResult("unknown command: '%s'\n" % line.strip(), ok=False)


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
