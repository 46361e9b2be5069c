"""The interactive console: wires the prompt modules together and runs the loop.

Owns nothing but the wiring: history (history.py), completion (completer.py),
highlighting (lexer.py), the job toolbar (toolbar.py), event lines above the
prompt (events_view.py) and the console-bound commands (waiting.py).  Events
reach the terminal only through ``patch_stdout`` while a prompt is up, so the
line being typed survives them.
"""
import sys
import threading
import time
from typing import Callable, Optional

from prompt_toolkit import PromptSession
from prompt_toolkit.lexers import PygmentsLexer
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.styles import Style

from monitor.completer import HmpCompleter
from monitor.events_view import EventsView, event_line
from monitor.history import history_path, open_history
from monitor.lexer import make_lexer
from monitor.script import PROMPT, console_text, default_interpreter, say_cancelled
from monitor.toolbar import REFRESH_INTERVAL, JobsToolbar
from monitor.waiting import JobWaiter, sleep_handler

# pygments' default style gives Error only a border, which terminals do not draw.
STYLE = Style.from_dict({"bottom-toolbar": "noreverse bg:#202020 #d0d0d0",
                         "pygments.error": "ansired"})


def banner(version: str) -> str:
    return ("blockmon %s monitor (QEMU 7.2 HMP commands) - type 'help' for more information, "
            "Tab to complete, Ctrl-D to leave" % version)


def _print_line(line: str) -> None:
    # sys.stdout is looked up per call: under patch_stdout it is the proxy that
    # prints above the prompt.
    print(line, flush=True)


class Repl:
    """``Repl(core).run()`` reads commands until Ctrl-D, ``quit`` or ``request_exit()``.

    ``input``/``output`` (prompt_toolkit's) are for tests.
    """

    def __init__(self, core, make_interpreter: Callable = default_interpreter,
                 history=None, input=None, output=None, colour: bool = True,
                 sleep: Callable = time.sleep, wait_stream=None):
        self._core = core
        self._events = EventsView(core.events, _print_line,
                                  formatter=lambda event: event_line(event, colour=colour))
        waiter = JobWaiter(core, stream=wait_stream if wait_stream is not None else sys.stdout,
                           events=self._events)
        # "\r": write over the "^C" the terminal echoes when Ctrl-C cuts a sleep short.
        sleeper = sleep_handler(sleep, after_ctrl_c="\r")
        self._interpreter = make_interpreter(core, {"block_job_wait": waiter.handler,
                                                    "sleep": sleeper})
        if history is None:
            history = open_history(history_path())
        self._exit_requested = threading.Event()
        self._session = PromptSession(
            message=PROMPT, history=history, completer=HmpCompleter(core),
            complete_while_typing=False, lexer=PygmentsLexer(make_lexer(core)),
            bottom_toolbar=JobsToolbar(core), refresh_interval=REFRESH_INTERVAL,
            style=STYLE, input=input, output=output, enable_history_search=False)

    def run_line(self, line: str) -> bool:
        """Run one typed line; True when the console should leave."""
        if not line.strip():
            return False
        result = self._interpreter.run_line(line)
        text = console_text(result.output)
        if text:
            print(text, end="", flush=True)
        return result.quit

    def read_line(self) -> Optional[str]:
        """One line from the prompt; "" after Ctrl-C (the line is dropped); None on Ctrl-D."""
        try:
            with patch_stdout(raw=True):
                return self._session.prompt()
        except KeyboardInterrupt:
            return ""
        except EOFError:
            return None

    def run(self) -> None:
        """The loop; on leaving, running jobs are cancelled cleanly and named."""
        try:
            while not self._exit_requested.is_set():
                line = self.read_line()
                if line is None or self._exit_requested.is_set():
                    break
                if self.run_line(line):
                    break
        finally:
            # Shut down while still subscribed, so the BLOCK_JOB_CANCELLED lines show.
            say_cancelled(self._core.shutdown(), lambda text: print(text, end="", flush=True))
            self._events.close()

    def request_exit(self) -> None:
        """Leave the loop from another thread (a ``quit`` from a QMP or HMP server)."""
        self._exit_requested.set()
        app = self._session.app
        if app.is_running and app.loop is not None:
            app.loop.call_soon_threadsafe(lambda: app.exit(exception=EOFError()))
