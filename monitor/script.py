"""Scripted sessions: monitor commands read from a pipe (or ``-c``), run in order.

Each command is echoed as ``(qemu) <line>`` before its output (``echo=False``
for ``-q`` and ``-c``), so stdout reads as a transcript.  Job events are printed
as one line each, the QMP event object exactly as the QMP server sends it.  At the
end of input the session waits for running jobs (progress on stderr only when
stderr is a terminal).  The exit status is 0 when every command succeeded and no
job failed (``BLOCK_JOB_ERROR``, or ``BLOCK_JOB_COMPLETED`` carrying ``error``),
else 1.  A job left paused at the end cannot finish: it is cancelled and counts as
a failure.
"""
import threading
import time
from typing import Callable, Iterable, Optional

from monitor.events_view import EventsView, event_json, is_failure
from monitor.waiting import JobWaiter, sleep_handler

PROMPT = "(qemu) "


def default_interpreter(core, handlers):
    from commands.hmp import HmpInterpreter
    return HmpInterpreter(core, handlers=handlers)


def console_text(output: str) -> str:
    """HMP output as the console prints it: "\\n" line ends, ending in a newline if not empty."""
    text = output.replace("\r\n", "\n")
    if text and not text.endswith("\n"):
        text += "\n"
    return text


def say_cancelled(cancelled, write) -> None:
    """Tell the operator which running jobs leaving cancelled (issue 4: 'says which')."""
    if cancelled:
        write("cancelled running job%s %s; images are valid and their backing files unchanged\n"
              % ("s" if len(cancelled) > 1 else "", ", ".join(cancelled)))


class ScriptSession:
    """Runs lines through the HMP interpreter; ``run(lines) -> exit status``."""

    def __init__(self, core, out, err, echo: bool = True, err_is_tty: bool = False,
                 make_interpreter: Callable = default_interpreter, sleep: Callable = time.sleep,
                 event_format: Callable = event_json):
        self._core = core
        self._out = out
        self._err = err
        self._echo = echo
        self._write_lock = threading.Lock()
        self._failed_jobs = []
        self._events = EventsView(core.events, self._write_event, formatter=event_format)
        self._failures = core.events.subscribe(self._note_failure)
        self._waiter = JobWaiter(core, stream=err if err_is_tty else None)
        self._interpreter = make_interpreter(core, {"block_job_wait": self._waiter.handler,
                                                    "sleep": sleep_handler(sleep)})
        self.quit_requested = False

    def _write(self, text: str) -> None:
        with self._write_lock:
            self._out.write(text)
            self._out.flush()

    def _say(self, text: str) -> None:
        self._err.write("blockmon: " + text)

    def _write_event(self, line: str) -> None:
        self._write(line + "\n")

    def _note_failure(self, event: dict) -> None:
        if is_failure(event):
            self._failed_jobs.append(event.get("data", {}).get("device"))

    def run_commands(self, lines: Iterable[str], stop: Optional[threading.Event] = None) -> bool:
        """Run each non-blank, non-comment line; True if all succeeded.  Stops after ``quit``."""
        ok = True
        for raw in lines:
            line = raw.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if self._echo:
                self._write(PROMPT + line + "\n")
            result = self._interpreter.run_line(line)
            self._write(console_text(result.output))
            ok = ok and result.ok
            if result.quit or (stop is not None and stop.is_set()):
                self.quit_requested = True
                break
        return ok

    def finish_jobs(self) -> bool:
        """At the end of input: wait for running jobs; cancel jobs left paused. True if none failed."""
        leftover = self._waiter.wait(None)
        if leftover:
            self._say(leftover)
            say_cancelled(self._core.shutdown(), self._say)
            return False
        return True

    def run(self, lines: Iterable[str]) -> int:
        """The whole session: commands, then (unless ``quit``) the wait for jobs; the exit status."""
        ok = self.run_commands(lines)
        if not self.quit_requested:
            ok = self.finish_jobs() and ok
        return self.close(ok)

    def close(self, ok: bool) -> int:
        """Cancel what still runs (saying which), stop listening; the exit status."""
        say_cancelled(self._core.shutdown(), self._say)
        self._events.close()
        self._failures()
        return 0 if ok and not self._failed_jobs else 1
