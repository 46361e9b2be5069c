"""Job events shown to the operator, and the JSON line scripts print for each event.

Background threads publish events; they never write to the terminal themselves.
``EventsView`` subscribes to the core's bus and hands each job event, formatted
(``event_line`` for people, ``event_json`` for scripts), to a ``sink``.  In the
REPL the sink is a ``print`` under prompt_toolkit's ``patch_stdout``, so the line
appears above the prompt and the typed line survives; ``block_job_wait`` swaps
the sink for its rich Live console while it draws.
"""
import json
import threading

# The QMP events a console shows: the job outcomes the issue names, plus READY
# and PENDING which need an operator's action.  JOB_STATUS_CHANGE is noise here.
JOB_EVENTS = ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_ERROR",
              "BLOCK_JOB_READY", "BLOCK_JOB_PENDING")

_COLOURS = {"BLOCK_JOB_COMPLETED": "32", "BLOCK_JOB_CANCELLED": "33", "BLOCK_JOB_ERROR": "31"}


def event_json(event: dict) -> str:
    """The event exactly as the QMP server sends it (one line, no trailing newline)."""
    return json.dumps(event)


def is_failure(event: dict) -> bool:
    """True for events that make a scripted session fail: a job error, or completion with error."""
    name = event.get("event")
    return name == "BLOCK_JOB_ERROR" or (name == "BLOCK_JOB_COMPLETED" and "error" in event.get("data", {}))


def event_line(event: dict, colour: bool = False) -> str:
    """The console's line for an event: its name, then its data as QMP JSON."""
    name = shown = event.get("event", "?")
    if colour:
        code = "31" if is_failure(event) else _COLOURS.get(name, "35")
        shown = "\x1b[1;%sm%s\x1b[0m" % (code, name)
    return "%s %s" % (shown, json.dumps(event.get("data", {})))


class EventsView:
    """Subscribes to ``bus``; passes ``formatter(event)`` of each job event to ``sink`` (swappable)."""

    def __init__(self, bus, sink, formatter=event_line, names=JOB_EVENTS):
        self._sink = sink
        self._formatter = formatter
        self._names = frozenset(names)
        self._lock = threading.Lock()
        self._unsubscribe = bus.subscribe(self._on_event)

    def _on_event(self, event: dict) -> None:
        if event.get("event") not in self._names:
            return
        line = self._formatter(event)
        with self._lock:
            self._sink(line)

    def swap_sink(self, sink):
        """Route lines to ``sink`` from now on; returns the previous sink."""
        with self._lock:
            previous, self._sink = self._sink, sink
        return previous

    def close(self) -> None:
        self._unsubscribe()
