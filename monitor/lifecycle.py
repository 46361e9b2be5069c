"""How a blockmon process ends: ``quit`` from any monitor, end of input, or a signal.

``QuitSignal`` is the one "leave now" flag: a ``quit`` from a QMP or HMP server, or a
terminating signal, sets it and runs its hooks (the REPL's exit, the end of the
script's input).  ``StdinLines`` reads a script from standard input in a thread, so
that a quit ends the session even while the input is an open pipe that sends nothing.
``terminate_on_signals`` makes SIGTERM, SIGHUP (and SIGINT outside the console) end
blockmon as they end QEMU: one line on stderr, QMP's ``SHUTDOWN`` with reason
``host-signal``, running jobs cancelled with their events, then exit.
"""
import codecs
import os
import queue
import signal
import sys
import threading

READ_CHUNK = 65536
_END = object()


class QuitSignal:
    """A ``quit`` from any monitor server, or a signal: sets ``event`` and calls the hooks."""

    def __init__(self):
        self.event = threading.Event()
        self.hooks = []
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            self.event.set()
            hooks = list(self.hooks)
        for hook in hooks:
            hook()

    def add_hook(self, hook):
        """Call ``hook`` on quit; at once if the quit came already (a QMP ``quit`` may
        arrive while the session is still being set up)."""
        with self._lock:
            self.hooks.append(hook)
            already = self.event.is_set()
        if already:
            hook()


class StdinLines:
    """The lines of a file descriptor, read by a daemon thread; iteration ends at end of
    input or at ``stop()``, whichever comes first.

    The thread reads the descriptor with os.read, not through sys.stdin: a daemon
    thread left blocked in a read must hold no lock that interpreter exit needs.
    """

    def __init__(self, fd: int = 0):
        self._fd = fd
        self._lines = queue.Queue()
        threading.Thread(target=self._pump, name="stdin-lines", daemon=True).start()

    def _pump(self):
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pending = ""
        while True:
            try:
                data = os.read(self._fd, READ_CHUNK)
            except OSError:
                data = b""
            pending += decoder.decode(data, final=not data)
            *lines, pending = pending.split("\n")
            for line in lines:
                self._lines.put(line + "\n")
            if not data:
                if pending:
                    self._lines.put(pending)
                self._lines.put(_END)
                return

    def stop(self):
        self._lines.put(_END)

    def __iter__(self):
        while True:
            line = self._lines.get()
            if line is _END:
                self._lines.put(_END)       # later iterations end at once too
                return
            yield line


def terminate_on_signals(core, quit_signal: QuitSignal, interactive: bool):
    """Install the handlers; returns a function that puts the previous ones back.  The
    console keeps SIGINT (Ctrl-C edits the line there)."""
    signals = [signal.SIGTERM, signal.SIGHUP] + ([] if interactive else [signal.SIGINT])
    started = threading.Event()

    def handler(signum, frame):
        # The handler runs in the main thread, between two of its bytecodes, maybe with
        # a lock held: the work happens in a thread of its own.
        if started.is_set():
            return
        started.set()
        threading.Thread(target=_terminate, args=(core, quit_signal, signum),
                         name="terminate", daemon=True).start()

    previous = {signum: signal.signal(signum, handler) for signum in signals}

    def restore():
        for signum, old_handler in previous.items():
            signal.signal(signum, old_handler)
    return restore


def _terminate(core, quit_signal: QuitSignal, signum: int) -> None:
    # QEMU: "qemu-system-x86_64: terminating on signal 15 from pid N (...)"
    sys.stderr.write("blockmon: terminating on signal %d\n" % signum)
    sys.stderr.flush()
    try:
        core.shutdown(reason="host-signal")
    finally:
        quit_signal()
