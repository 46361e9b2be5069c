"""The QMP protocol over a stream socket, as QEMU 7.2 speaks it.

One ``QmpServer`` serves every QMP listener of the process; each connection is
a ``QmpConnection``.  The protocol rules (monitor/qmp.c, qapi/qmp-dispatch.c):
greeting, ``qmp_capabilities`` negotiation and its two errors, request checking
with QEMU's texts, ``id`` echoed, events only to negotiated clients.  Commands
run through ``core.execute`` in the event loop's executor, one at a time per
connection (QEMU without OOB does the same), so a slow command stalls only its
own client.  Every reply and event ends with CRLF, as QEMU's monitor writes it.

Memory per client is bounded: a request is capped by the JsonSplitter, and a
client whose unsent output exceeds ``max_outbuf`` bytes is dropped.
"""
import asyncio
import json
import sys
import traceback

from commands.errors import COMMAND_NOT_FOUND, GENERIC, CommandError, qmp_error
from images.errors import BlockError
from monitor.json_stream import JsonParseError, JsonSplitter, parse_message

READ_CHUNK = 64 * 1024
NEGOTIATION_NEEDED = "Expecting capabilities negotiation with 'qmp_capabilities'"
ALREADY_NEGOTIATED = "Capabilities negotiation is already complete, command ignored"


def check_request(request):
    """QEMU's qmp_dispatch_check_obj: return (name, arguments) or raise CommandError."""
    if not isinstance(request, dict):
        raise CommandError("QMP input must be a JSON object")
    for key, value in request.items():
        if key == "execute":
            if not isinstance(value, str):
                raise CommandError("QMP input member 'execute' must be a string")
        elif key == "arguments":
            if not isinstance(value, dict):
                raise CommandError("QMP input member 'arguments' must be an object")
        elif key != "id":
            # exec-oob lands here too: the greeting offers no "oob" capability.
            raise CommandError("QMP input member '%s' is unexpected" % key)
    if "execute" not in request:
        raise CommandError("QMP input lacks member 'execute'")
    return request["execute"], request.get("arguments", {})


def check_capabilities_arguments(arguments: dict):
    """Arguments of qmp_capabilities: ``enable`` lists QMPCapability values; we offer none."""
    for key in arguments:
        if key != "enable":
            raise CommandError("Parameter '%s' is unexpected" % key)
    enable = arguments.get("enable", [])
    if not isinstance(enable, list):
        raise CommandError("Invalid parameter type for 'enable', expected: array")
    for index, capability in enumerate(enable):
        if not isinstance(capability, str):
            raise CommandError("Invalid parameter type for 'enable[%d]', expected: string" % index)
        if capability != "oob":
            raise CommandError("Parameter 'enable[%d]' does not accept value '%s'" % (index, capability))
        raise CommandError("Capability 'oob' not available")


def encode(message: dict) -> bytes:
    """One message on the wire: QEMU's JSON spacing, ASCII escapes, CRLF."""
    return json.dumps(message).encode("ascii") + b"\r\n"


class QmpConnection:
    """One client: negotiation state and a bounded outgoing buffer."""

    def __init__(self, writer: asyncio.StreamWriter, max_outbuf: int):
        self.writer = writer
        self.max_outbuf = max_outbuf
        self.negotiated = False

    @property
    def closed(self) -> bool:
        return self.writer.transport.is_closing()

    def send(self, message: dict):
        """Queue a message; drop the client when it does not read fast enough."""
        self.send_raw(encode(message))

    def send_raw(self, data: bytes):
        if self.closed:
            return
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size() > self.max_outbuf:
            print("blockmon: dropping a QMP client that is not reading (%d bytes unsent)"
                  % self.writer.transport.get_write_buffer_size(), file=sys.stderr)
            self.writer.transport.abort()


class QmpServer:
    """Serves QMP connections against ``core``; ``on_quit()`` is called after a ``quit`` reply."""

    def __init__(self, core, on_quit=None, max_request=1 << 20, max_outbuf=4 << 20):
        self.core = core
        self.on_quit = on_quit
        self.max_request = max_request
        self.max_outbuf = max_outbuf
        self.connections = set()
        self.closing = False
        self._greeting = None

    def greeting(self) -> dict:
        if self._greeting is None:
            version = self.core.execute("query-version")
            self._greeting = {"QMP": {"version": version, "capabilities": []}}
        return self._greeting

    def writers(self) -> list:
        return [connection.writer for connection in self.connections]

    def broadcast_raw(self, data: bytes):
        """Send an encoded event to every negotiated client (call in the loop thread)."""
        for connection in list(self.connections):
            if connection.negotiated:
                connection.send_raw(data)

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        if self.closing:
            writer.close()
            return
        connection = QmpConnection(writer, self.max_outbuf)
        self.connections.add(connection)
        try:
            connection.send(self.greeting())
            await self._serve(connection, reader)
        except (ConnectionError, OSError):
            pass        # the client went away; nothing else is affected
        except asyncio.CancelledError:
            raise       # server shutdown: the task ends cancelled (finally closes the writer)
        finally:
            self.connections.discard(connection)
            writer.close()

    async def _serve(self, connection: QmpConnection, reader: asyncio.StreamReader):
        splitter = JsonSplitter(self.max_request)
        while not connection.closed:
            data = await reader.read(READ_CHUNK)
            if not data:
                return
            for raw in splitter.feed(data):
                request = raw if isinstance(raw, JsonParseError) else parse_message(raw)
                reply, quit_now = await self._answer(connection, request)
                connection.send(reply)
                if quit_now:
                    await self._finish_quit(connection)
                if connection.closed:
                    return

    async def _answer(self, connection: QmpConnection, request):
        """The reply to one parsed request, and whether it was a successful ``quit``."""
        if isinstance(request, JsonParseError):
            return {"error": {"class": GENERIC, "desc": request.desc}}, False
        reply, quit_now = {}, False
        try:
            name, arguments = check_request(request)
            reply["return"] = await self._dispatch(connection, name, arguments)
            # An HMP 'quit' (qmp-shell -H) quits as QEMU does: the core records it.
            quit_now = name == "quit" or (name == "human-monitor-command"
                                          and self.core.quit_requested.is_set())
        except (CommandError, BlockError) as exc:
            reply["error"] = qmp_error(exc)
        except Exception as exc:     # a bug in a command: report it, keep serving
            traceback.print_exc(file=sys.stderr)
            reply["error"] = {"class": GENERIC, "desc": str(exc) or type(exc).__name__}
        if isinstance(request, dict) and "id" in request:
            reply["id"] = request["id"]
        return reply, quit_now

    async def _dispatch(self, connection: QmpConnection, name: str, arguments: dict):
        if name == "qmp_capabilities":
            if connection.negotiated:
                raise CommandError(ALREADY_NEGOTIATED, COMMAND_NOT_FOUND)
            check_capabilities_arguments(arguments)
            connection.negotiated = True
            return {}
        if not connection.negotiated:
            # QEMU only knows qmp_capabilities before negotiation, and rewrites
            # the CommandNotFound it gets into this hint.
            raise CommandError(NEGOTIATION_NEEDED, COMMAND_NOT_FOUND)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, self.core.execute, name, arguments)
        json.dumps(result)      # a result that cannot be sent is a bug, reported as such
        return result

    async def _finish_quit(self, connection: QmpConnection):
        """Let the reply reach the client, then tell the owner to exit."""
        try:
            await asyncio.wait_for(connection.writer.drain(), timeout=5)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass
        if self.on_quit is not None:
            self.on_quit()
