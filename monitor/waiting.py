"""Console-bound commands: ``block_job_wait [device]`` and ``sleep SECONDS`` (ours).

They are the handlers the HMP interpreter calls back (``handlers={"block_job_wait":
..., "sleep": ...}``): waiting belongs to whoever owns the terminal.  While waiting
with a terminal, rich progress bars are drawn (no prompt is up then, so a rich
``Live`` is safe) and job events are routed through the Live console.  Ctrl-C stops
the waiting and leaves the jobs running.
"""
import time
from typing import Callable, List, Optional

from commands.errors import DEVICE_NOT_FOUND, CommandError
from images.errors import JobError

POLL_INTERVAL = 0.1


def _waited_jobs(core, job_id: Optional[str]) -> List[dict]:
    infos = core.execute("query-block-jobs")
    return [info for info in infos if job_id is None or info.get("device") == job_id]


def _quitting(core) -> bool:
    """Whether a ``quit`` came from some monitor (an Event in the core, a flag in fakes)."""
    flag = getattr(core, "quit_requested", False)
    return flag.is_set() if hasattr(flag, "is_set") else bool(flag)


def _all_paused(infos: List[dict]) -> bool:
    return all(info.get("paused") or info.get("status") in ("paused", "standby") for info in infos)


def _all_waiting_for_complete(core, infos: List[dict]) -> bool:
    """Every job is ready and nobody asked it to finish (a ready mirror runs until
    block_job_complete or a cancel; once asked, it stays 'ready' until it is in sync)."""
    jobs = core.jobs() if callable(getattr(core, "jobs", None)) else []
    finishing = {job.id for job in jobs if getattr(job, "finishing", False)}
    return all(info.get("status") == "ready" and info.get("device") not in finishing
               for info in infos)


class JobWaiter:
    """Blocks until a job (or every job) ends; optional rich progress on ``stream``.

    ``events`` is the EventsView whose sink is swapped to the Live console while
    bars are drawn, so an event line lands above the bars instead of through them.
    """

    def __init__(self, core, stream=None, events=None, sleep: Callable = time.sleep):
        self._core = core
        self._stream = stream          # None: wait silently (scripts without a TTY)
        self._events = events
        self._sleep = sleep

    def wait(self, job_id: Optional[str] = None) -> str:
        """Wait; return the HMP output ("" when the jobs ended)."""
        try:
            if self._stream is None:
                return self._poll(job_id, lambda infos: None)
            return self._wait_drawing(job_id)
        except KeyboardInterrupt:
            left = ", ".join(info["device"] for info in _waited_jobs(self._core, job_id))
            return "stopped waiting; still running: %s\n" % (left or "nothing")

    def _poll(self, job_id, draw) -> str:
        while True:
            infos = _waited_jobs(self._core, job_id)
            if not infos or _quitting(self._core):
                return ""       # a quit from a monitor server: leaving cancels the jobs
            draw(infos)
            if _all_waiting_for_complete(self._core, infos):
                return ""   # a ready mirror waits for block_job_complete: the wait is over
            if _all_paused(infos):
                return "not waiting: %s paused (block_job_resume to go on)\n" % ", ".join(
                    info["device"] for info in infos)
            try:
                self._core.wait_jobs(job_id, timeout=POLL_INTERVAL)
            except JobError as err:
                if not err.not_found:
                    raise
                # it ended and was dismissed between the query and the wait: the next
                # query no longer lists it

    def _wait_drawing(self, job_id) -> str:
        # rich is imported here, when a terminal watches: scripts (`-c quit`) start without it.
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        from monitor.progress import ThroughputMeter, waiting_view, with_copied
        console = Console(file=self._stream, force_terminal=True)
        meter = ThroughputMeter()
        infos = _waited_jobs(self._core, job_id)
        if not infos:
            return ""
        # Three cells spare: the terminal echoes "^C" after the last line; had that line
        # wrapped, the transient Live would erase one line too few and leave one behind.
        width = lambda: console.width - 3
        view = lambda now: waiting_view(with_copied(self._core, now), meter, job_id, width())
        with Live(view(infos), console=console, transient=True, auto_refresh=False) as live:
            previous = (self._events.swap_sink(lambda line: live.console.print(Text.from_ansi(line)))
                        if self._events else None)
            try:
                return self._poll(job_id, lambda now: live.update(view(now), refresh=True))
            finally:
                if self._events:
                    self._events.swap_sink(previous)

    def handler(self, args: dict) -> str:
        """The ``block_job_wait`` callback: ``args`` holds the optional ``device``.

        A device whose job has already ended returns at once (scripts wait on jobs
        that may be done); a name nothing answers to is an error, or a mistyped
        ``block_job_wait virtio`` would pass silently as if the job had ended.
        """
        device = args.get("device")
        core = self._core
        if device is not None and device not in {*core.device_names(), *core.node_names(),
                                                 *core.job_ids()}:
            raise CommandError("Cannot find device='%s' nor node-name='%s'" % (device, device),
                               DEVICE_NOT_FOUND)
        return self.wait(device)


def sleep_handler(sleep: Callable = time.sleep, after_ctrl_c: str = "") -> Callable[[dict], str]:
    """The ``sleep SECONDS`` callback; Ctrl-C cuts the sleep short.

    ``after_ctrl_c`` starts the message: the console passes "\\r" to write over the
    "^C" its terminal has just echoed.
    """
    def handler(args: dict) -> str:
        seconds = float(args.get("seconds", 0))
        try:
            sleep(seconds)
        except KeyboardInterrupt:
            return after_ctrl_c + "sleep interrupted\n"
        return ""
    return handler
