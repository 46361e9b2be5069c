"""The bottom toolbar: one live, rich-rendered progress line per running job.

prompt_toolkit calls the toolbar on every redraw (``refresh_interval`` in the
REPL makes that about twice a second); it reads the jobs through the core's
``query-block-jobs`` and returns ANSI text.  Nothing here writes to the terminal.
"""
import shutil

from prompt_toolkit.formatted_text import ANSI

from monitor.progress import ThroughputMeter, jobs_table, render_ansi, with_copied

REFRESH_INTERVAL = 0.5
HINT_SEPARATOR = " \u2502 "
IDLE_HINT = HINT_SEPARATOR.join(("no active jobs", "Tab completes", "Ctrl-R searches history",
                                 "Ctrl-D leaves"))


def terminal_width() -> int:
    return shutil.get_terminal_size((100, 24)).columns


def idle_hint(width: int) -> str:
    """As many whole phrases of IDLE_HINT as fit in ``width`` cells (a cut phrase reads wrong)."""
    parts = IDLE_HINT.split(HINT_SEPARATOR)
    while len(parts) > 1 and len(HINT_SEPARATOR.join(parts)) > width:
        parts.pop()
    return HINT_SEPARATOR.join(parts)


class JobsToolbar:
    """Callable for ``PromptSession(bottom_toolbar=...)``."""

    def __init__(self, core, meter: ThroughputMeter = None, width=terminal_width):
        self._core = core
        self._meter = meter or ThroughputMeter()
        self._width = width

    def text(self) -> str:
        """The toolbar as ANSI-coded text (one line per job, or the idle hint)."""
        infos = with_copied(self._core, self._core.execute("query-block-jobs"))
        width = self._width() - 1
        if not infos:
            self._meter.forget_except(())
            return idle_hint(width)
        return render_ansi(jobs_table(infos, self._meter, width), width)

    def __call__(self):
        return ANSI(self.text())
