"""Console-bound commands: ``block_job_wait [device]`` and ``sleep SECONDS`` (ours).

They are the handlers the HMP interpreter calls back (``handlers={"block_job_wait":
..., "sleep": ...}``): waiting belongs to whoever owns the terminal.  While waiting
with a terminal, rich progress bars are drawn (no prompt is up then, so a rich
``Live`` is safe) and job events are routed through the Live console.  Ctrl-C stops
the waiting and leaves the jobs running.
"""
import time
from typing import Callable, List, Optional

from rich.console import Console
from rich.live import Live
from rich.text import Text

from monitor.progress import ThroughputMeter, waiting_view

POLL_INTERVAL = 0.1


def _waited_jobs(core, job_id: Optional[str]) -> List[dict]:
    infos = core.execute("query-block-jobs")
    return [info for info in infos if job_id is None or info.get("device") == job_id]


def _all_paused(infos: List[dict]) -> bool:
    return all(info.get("paused") or info.get("status") in ("paused", "standby") for info in infos)


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
            if not infos:
                return ""
            draw(infos)
            if _all_paused(infos):
                return "not waiting: %s paused (block_job_resume to go on)\n" % ", ".join(
                    info["device"] for info in infos)
            self._core.wait_jobs(job_id, timeout=POLL_INTERVAL)

    def _wait_drawing(self, job_id) -> str:
        console = Console(file=self._stream, force_terminal=True)
        meter = ThroughputMeter()
        infos = _waited_jobs(self._core, job_id)
        if not infos:
            return ""
        with Live(waiting_view(infos, meter, job_id), console=console, transient=True,
                  auto_refresh=False) as live:
            previous = (self._events.swap_sink(lambda line: live.console.print(Text.from_ansi(line)))
                        if self._events else None)
            try:
                return self._poll(job_id, lambda now: live.update(waiting_view(now, meter, job_id),
                                                                  refresh=True))
            finally:
                if self._events:
                    self._events.swap_sink(previous)

    def handler(self, args: dict) -> str:
        """The ``block_job_wait`` callback: ``args`` holds the optional ``device``."""
        return self.wait(args.get("device"))


def sleep_handler(sleep: Callable = time.sleep) -> Callable[[dict], str]:
    """The ``sleep SECONDS`` callback; Ctrl-C cuts the sleep short."""
    def handler(args: dict) -> str:
        seconds = float(args.get("seconds", 0))
        try:
            sleep(seconds)
        except KeyboardInterrupt:
            return "sleep interrupted\n"
        return ""
    return handler
