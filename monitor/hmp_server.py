"""The HMP console over a socket (``-monitor unix:PATH,server=on,wait=off``).

For socat and scripts: a banner, the ``(qemu) `` prompt, one command per line,
its output with CRLF line ends (QEMU's monitor_puts turns every LF into CRLF),
then the prompt again.  Unlike QEMU there is no readline echo of the typed line
and no terminal escape sequences, so scripts read only answers.  HMP never
prints events.  ``quit`` closes the connection and tells the owner to exit.
"""
import asyncio
import sys
import traceback

from commands.hmp import HmpInterpreter

PROMPT = b"(qemu) "
MAX_LINE = 1 << 20
READ_CHUNK = 64 * 1024


def crlf(text: str) -> bytes:
    """HMP output as the monitor writes it: every line end is CRLF."""
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8", "replace")


def banner_for(version: dict) -> bytes:
    """QEMU's banner, with the QEMU version blockmon reports in query-version."""
    qemu = version["qemu"]
    return ("QEMU %d.%d.%d monitor - type 'help' for more information\r\n"
            % (qemu["major"], qemu["minor"], qemu["micro"])).encode("ascii")


def default_interpreter_factory(core):
    return HmpInterpreter(core)


class HmpServer:
    """Serves HMP connections; each gets its own interpreter from ``interpreter_factory(core)``."""

    def __init__(self, core, on_quit=None, interpreter_factory=None, max_line=MAX_LINE):
        self.core = core
        self.on_quit = on_quit
        self.interpreter_factory = interpreter_factory or default_interpreter_factory
        self.max_line = max_line
        self._banner = None
        self._writers = set()
        self.closing = False

    def writers(self) -> list:
        return list(self._writers)

    def banner(self) -> bytes:
        if self._banner is None:
            self._banner = banner_for(self.core.execute("query-version"))
        return self._banner

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        if self.closing:
            writer.close()
            return
        self._writers.add(writer)
        try:
            interpreter = self.interpreter_factory(self.core)
            writer.write(self.banner() + PROMPT)
            async for line in self._lines(reader, writer):
                if not line.strip():
                    writer.write(PROMPT)
                    continue
                output, quit_now = await self._run(interpreter, line)
                writer.write(output if quit_now else output + PROMPT)
                await writer.drain()
                if quit_now:
                    writer.close()
                    if self.on_quit is not None:
                        self.on_quit()
                    return
        except (ConnectionError, OSError):
            pass        # the client went away
        except asyncio.CancelledError:
            raise       # server shutdown: the task ends cancelled (finally closes the writer)
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _lines(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        """Yield complete lines (str, line end stripped); an overlong line is refused and skipped."""
        pending = bytearray()
        discarding = False
        while True:
            data = await reader.read(READ_CHUNK)
            if not data:
                return
            pending += data
            while True:
                newline = pending.find(b"\n")
                if newline < 0:
                    break
                line, pending = bytes(pending[:newline]), pending[newline + 1:]
                if discarding:
                    discarding = False
                elif len(line) > self.max_line:
                    writer.write(self._too_long())
                else:
                    yield line.rstrip(b"\r").decode("utf-8", "replace")
            if len(pending) > self.max_line:
                if not discarding:
                    writer.write(self._too_long())
                pending.clear()
                discarding = True

    def _too_long(self) -> bytes:
        return b"Error: input line longer than %d bytes, ignored\r\n" % self.max_line + PROMPT

    async def _run(self, interpreter, line: str):
        """(output bytes, quit?) for one line, run in the executor so the loop stays free."""
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(None, interpreter.run_line, line)
        except Exception as exc:     # a bug in a command: report it, keep serving
            traceback.print_exc(file=sys.stderr)
            return crlf("Error: %s\n" % (exc or type(exc).__name__)), False
        output = result.output or ""
        if output and not output.endswith("\n"):
            output += "\n"         # the prompt always starts a line
        return crlf(output), bool(result.quit)
