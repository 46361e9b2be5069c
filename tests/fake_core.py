"""The one stand-in for ``commands.core.BlockCore`` (and for ``commands.hmp.HmpInterpreter``).

``FakeCore`` offers the interface the monitor and the HMP adapters use of the real
core (``execute``, ``events``, ``quit_requested``, ``device_names``, ``node_names``,
``job_ids``, ``active_image``, ``wait_jobs``, ``shutdown``):

* ``execute`` checks arguments against the command table's schemas as the real
  core does (``commands.qmp_args``), records ``(name, arguments)`` in ``calls`` and
  answers with a canned response (``FakeCore(query_block=[...])``; an exception is
  raised, a callable is called with the arguments) or, without one, the way the real
  core would: jobs from ``jobs``, "Block job 'x' not found" for a job verb on no job,
  ``human-monitor-command`` from ``HMP_ANSWERS``.
* Test-only commands, outside the table: ``x-slow`` blocks until ``gate`` is set,
  ``x-echo`` returns its arguments, ``x-bug`` raises a non-command exception,
  ``x-emit`` publishes an event.
* Jobs move only when a test moves them (``start_job``, ``advance``, ``pause``,
  ``finish``, ``cancel``); devices are the chains in ``chains``.
"""
import json
import threading
from types import SimpleNamespace
from typing import NamedTuple

from commands.errors import DEVICE_NOT_ACTIVE, CommandError
from commands.qmp_args import validate_arguments
from images.events import EventBus

VERSION = {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "blockmon 0.1.0"}
TIMEOUT = 10
JOB_VERBS = ("block-job-set-speed", "block-job-cancel", "block-job-pause", "block-job-resume",
             "block-job-complete")
HMP_ANSWERS = {
    "info block-jobs": "No active jobs\r\n",
    "help": "block_job_pause device -- pause an active background block operation\r\n"
            "info [subcommand] -- show various information about the system state\r\n"
            "quit|q  -- quit the emulator\r\n",
    "info": "info block-jobs  -- show progress of ongoing block device operations\r\n"
            "info version  -- show the version of QEMU\r\n",
    "block_job_pause j1": "Error: Block job 'j1' not found\r\n",
}

QUERY_BLOCK_D = [{
    "device": "virtio0", "qdev": "", "locked": False, "removable": False, "type": "unknown",
    "io-status": "ok",
    "inserted": {
        "file": "/images/s1/D.qcow2", "node-name": "#block195", "ro": False, "drv": "qcow2",
        "backing_file": "/images/s1/C.qcow2", "backing_file_depth": 3, "encrypted": False,
        "detect_zeroes": "off", "cache": {"writeback": True, "direct": False, "no-flush": False},
        "image": {"filename": "/images/s1/D.qcow2", "format": "qcow2",
                  "virtual-size": 2147483648, "actual-size": 1382838272},
    },
}]


def fake_chain(chains, name):
    """The image a device or node name stands for, in ``{device: [top, ..., bottom]}``;
    overlays store their backing as "<node>.qcow2".  CommandError as the core raises it."""
    for device, nodes in chains.items():
        start = 0 if name == device else (nodes.index(name) if name in nodes else None)
        if start is None:
            continue
        image = None
        for node in reversed(nodes[start:]):
            image = SimpleNamespace(node_name=node, backing=image,
                                    backing_name=image.node_name + ".qcow2" if image else None)
        return image
    raise CommandError("Cannot find device='%s' nor node-name='%s'" % (name, name))


class FakeCore:
    def __init__(self, **responses):
        self.events = EventBus(clock=lambda: 1700000000.25)
        self.quit_requested = threading.Event()
        self.chains = {"virtio0": ["D", "C", "B", "A"], "ide0-hd0": ["disk0"]}
        self.jobs = {}
        self.cond = threading.Condition()
        self.calls = []              # (name, arguments) of every valid execute
        self.waited = []             # the job id of every wait_jobs call
        self.on_wait = None          # called (with the job id) each time wait_jobs is entered
        self.shutdown_calls = 0
        self.gate = threading.Event()
        self.slow_started = threading.Event()
        self.slow_finished = threading.Event()
        self.responses = {"query-block": [], "x-blockmon-qemu-io": "",
                          "query-version": json.loads(json.dumps(VERSION))}
        self.responses.update({k.replace("_", "-"): v for k, v in responses.items()})

    # -- QMP ------------------------------------------------------------------------
    def execute(self, name, arguments=None):
        arguments = dict(arguments or {})
        if name.startswith("x-") and name != "x-blockmon-qemu-io" and name != "x-blockmon-block-map":
            return self._test_command(name, arguments)
        validate_arguments(name, arguments)
        self.calls.append((name, arguments))
        if name in self.responses:
            answer = self.responses[name]
            if isinstance(answer, Exception):
                raise answer
            return answer(arguments) if callable(answer) else json.loads(json.dumps(answer))
        return self._like_the_core(name, arguments)

    def _like_the_core(self, name, arguments):
        if name == "query-block-jobs":
            with self.cond:
                return [dict(job) for job in self.jobs.values()]
        if name in JOB_VERBS and arguments["device"] not in self.jobs:
            raise CommandError("Block job '%s' not found" % arguments["device"], DEVICE_NOT_ACTIVE)
        if name == "query-commands":
            from commands.table import qmp_command_names
            return [{"name": n} for n in qmp_command_names()]
        if name == "human-monitor-command":
            line = arguments["command-line"]
            return HMP_ANSWERS.get(line, "unknown command: '%s'\r\n" % line)
        if name == "quit":
            self.quit_requested.set()
        return {}

    def _test_command(self, name, arguments):
        self.calls.append((name, arguments))
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
        validate_arguments(name, arguments)      # CommandNotFound, as the core says it

    # -- devices ----------------------------------------------------------------------
    def device_names(self):
        return list(self.chains)

    def node_names(self):
        return [node for chain in self.chains.values() for node in chain]

    def active_image(self, name):
        """A stand-in image chain (node_name, backing_name, backing) for ``name``."""
        return fake_chain(self.chains, name)

    # -- jobs, moved by the test ------------------------------------------------------------
    def job_ids(self):
        return list(self.jobs)

    def start_job(self, job_id, length, speed=0):
        with self.cond:
            self.jobs[job_id] = {"type": "stream", "device": job_id, "len": length, "offset": 0,
                                 "busy": True, "paused": False, "speed": speed, "io-status": "ok",
                                 "ready": False, "status": "running", "auto-finalize": True,
                                 "auto-dismiss": True}

    def advance(self, job_id, count):
        with self.cond:
            self.jobs[job_id]["offset"] += count

    def pause(self, job_id):
        with self.cond:
            self.jobs[job_id].update(paused=True, status="paused")

    def _end(self, job_id, event, error=None):
        with self.cond:
            job = self.jobs.pop(job_id)
            self.cond.notify_all()
        data = {key: job[key] for key in ("type", "device", "len", "offset", "speed")}
        if error:
            data["error"] = error
        self.events.publish(event, data)

    def finish(self, job_id, error=None):
        with self.cond:
            self.jobs[job_id]["offset"] = self.jobs[job_id]["len"]
        self._end(job_id, "BLOCK_JOB_COMPLETED", error)

    def cancel(self, job_id):
        self._end(job_id, "BLOCK_JOB_CANCELLED")

    def wait_jobs(self, job_id=None, timeout=None):
        self.waited.append(job_id)
        if self.on_wait:
            self.on_wait(job_id)
        with self.cond:
            def ended():
                return job_id not in self.jobs if job_id else not self.jobs
            return self.cond.wait_for(ended, timeout)

    def shutdown(self):
        self.shutdown_calls += 1
        running = list(self.jobs)
        for job_id in running:
            self.cancel(job_id)
        return running


class HmpResult(NamedTuple):
    output: str
    ok: bool = True
    quit: bool = False


class FakeInterpreter:
    """Stands in for commands.hmp.HmpInterpreter: ``stream DEV LEN``, ``fail``, ``echo TEXT``,
    ``info block-jobs``, ``info two``, ``nonl``, ``bug`` (raises), ``block_job_pause``,
    ``quit``, and the console-bound ``block_job_wait [DEV]`` and ``sleep N`` via ``handlers``."""

    def __init__(self, core, handlers=None):
        self.core = core
        self.handlers = handlers or {}
        self.lines = []

    def run_line(self, line):
        self.lines.append(line)
        words = line.split()
        if words and words[0] in self.handlers:
            return HmpResult(self._console_bound(words), True, False)
        if words and words[0] == "stream":
            self.core.start_job(words[1], int(words[2]))
            return HmpResult("")
        if words == ["bug"]:
            raise RuntimeError("interpreter bug")
        if words and words[0] in ("quit", "q"):
            self.core.quit_requested.set()
            return HmpResult("", quit=True)
        if words and words[0] == "echo":
            return HmpResult(" ".join(words[1:]) + "\r\n")
        fixed = {("fail",): HmpResult("Error: it failed\r\n", False),
                 ("info", "block-jobs"): HmpResult("No active jobs\n"),
                 ("info", "two"): HmpResult("line one\nline two\n"),
                 ("nonl",): HmpResult("no newline")}
        if tuple(words) in fixed:
            return fixed[tuple(words)]
        if words and words[0] == "block_job_pause":
            return HmpResult("")
        return HmpResult("unknown command: '%s'\n" % line.strip(), ok=False)

    def _console_bound(self, words):
        if words[0] == "block_job_wait":
            return self.handlers["block_job_wait"]({"device": words[1]} if len(words) > 1 else {})
        return self.handlers["sleep"]({"seconds": float(words[1])})
