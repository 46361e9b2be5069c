"""Stand-ins for the command core and the HMP interpreter, for the console's unit tests.

FakeCore follows CORE_API.md (devices, nodes, jobs as query-block-jobs dicts, an
EventBus, wait_jobs, shutdown); jobs move only when a test moves them.
FakeInterpreter understands a handful of lines and calls the console handlers.
"""
import threading
from collections import namedtuple

from images.events import EventBus

HmpResult = namedtuple("HmpResult", "output ok quit")


def fake_chain(chains, name):
    """The image a device or node name stands for, in ``{device: [top, ..., bottom]}``;
    overlays store their backing as "<node>.qcow2".  CommandError as the core raises it."""
    from types import SimpleNamespace
    from commands.errors import CommandError
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
    def __init__(self):
        self.events = EventBus(clock=lambda: 1700000000.25)
        self.chains = {"virtio0": ["D", "C", "B", "A"], "ide0-hd0": ["disk0"]}
        self.jobs = {}
        self.cond = threading.Condition()
        self.on_wait = None          # called (with the job id) each time wait_jobs is entered
        self.shutdown_calls = 0

    def device_names(self):
        return list(self.chains)

    def node_names(self):
        return [node for chain in self.chains.values() for node in chain]

    def active_image(self, name):
        """A stand-in image chain (node_name, backing_name, backing) for ``name``."""
        return fake_chain(self.chains, name)

    def job_ids(self):
        return list(self.jobs)

    def execute(self, name, arguments=None):
        assert name == "query-block-jobs", name
        with self.cond:
            return [dict(job) for job in self.jobs.values()]

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


class FakeInterpreter:
    """``stream DEV LEN``, ``fail``, ``echo TEXT``, ``quit``, ``block_job_wait [DEV]``, ``sleep N``."""

    def __init__(self, core, handlers):
        self.core = core
        self.handlers = handlers
        self.lines = []

    def run_line(self, line):
        self.lines.append(line)
        words = line.split()
        if words[0] == "stream":
            self.core.start_job(words[1], int(words[2]))
            return HmpResult("", True, False)
        if words[0] == "fail":
            return HmpResult("Error: it failed\r\n", False, False)
        if words[0] == "echo":
            return HmpResult(" ".join(words[1:]) + "\r\n", True, False)
        if words[0] in ("quit", "q"):
            return HmpResult("", True, True)
        if words[0] == "block_job_wait":
            return HmpResult(self.handlers["block_job_wait"]({"device": words[1]} if len(words) > 1 else {}),
                             True, False)
        if words[0] == "sleep":
            return HmpResult(self.handlers["sleep"]({"seconds": float(words[1])}), True, False)
        return HmpResult("unknown command: '%s'\r\n" % words[0], False, False)
