"""Every monitor socket of the process: QMP (``-qmp``) and HMP (``-monitor``) listeners.

``MonitorServers`` takes the chardev specs (parsed by ``monitor.chardev``), binds every socket on the caller's
thread (so a bad spec or a busy port is a one-line error before anything runs),
then serves them from an asyncio loop in one daemon thread.  Events from
``core.events`` (published in job threads) hop into that loop with
``call_soon_threadsafe`` and go to every negotiated QMP client.

Safety: a unix socket is bound under umask 0177 and chmod-ed to 0600, so only
the owner can connect; TCP binds exactly the address it is given, and a
non-loopback address prints a warning, because QMP has no authentication.
"""
import asyncio
import concurrent.futures
import os
import socket
import stat
import sys
import threading

from monitor.chardev import ChardevError, ChardevSpec, parse_chardev
from monitor.hmp_server import HmpServer
from monitor.qmp_server import QmpServer, encode

START_TIMEOUT = 30
STOP_TIMEOUT = 10
DRAIN_TIMEOUT = 1.0   # seconds the last events may take to reach the clients at exit


class MonitorStartError(Exception):
    """A listener that could not be opened; ``str()`` is one line naming it."""


class MonitorServers:
    """QMP and HMP listeners for ``core``; ``on_quit()`` is called (in the server thread) on ``quit``."""

    def __init__(self, core, qmp_specs, monitor_specs, on_quit=None, hmp_factory=None,
                 max_request=1 << 20, max_outbuf=4 << 20):
        self.core = core
        self.qmp_specs = [_parse(text, "-qmp") for text in qmp_specs]
        self.monitor_specs = [_parse(text, "-monitor") for text in monitor_specs]
        self.qmp = QmpServer(core, on_quit, max_request=max_request, max_outbuf=max_outbuf)
        self.hmp = HmpServer(core, on_quit, interpreter_factory=hmp_factory, max_line=max_request)
        self.addresses = []         # "unix:PATH" / "tcp:HOST:PORT" actually listening, in spec order
        self._sockets = []          # (spec, socket, handler)
        self._unix_paths = []       # (path, inode) to unlink on stop
        self._servers = []
        self._executor = None
        self._loop = None
        self._thread = None
        self._unsubscribe = None

    def start(self):
        """Bind every socket and start serving; raise MonitorStartError if one cannot listen."""
        try:
            if self.qmp_specs:
                self.qmp.greeting()
            if self.monitor_specs:
                self.hmp.banner()
            for spec in self.qmp_specs:
                self._sockets.append((spec, self._listen(spec), self.qmp.handle_connection))
            for spec in self.monitor_specs:
                self._sockets.append((spec, self._listen(spec), self.hmp.handle_connection))
        except MonitorStartError:
            self._close_sockets()
            raise
        self._loop = asyncio.new_event_loop()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=8, thread_name_prefix="blockmon-monitor")
        self._loop.set_default_executor(self._executor)
        self._thread = threading.Thread(target=_run_loop, args=(self._loop,), name="blockmon-monitors",
                                        daemon=True)
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._serve_all(), self._loop)
        future.result(timeout=START_TIMEOUT)
        self._unsubscribe = self.core.events.subscribe(self._on_event)
        return self

    def stop(self):
        """Close every listener and connection; safe to call twice and from on_quit."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        loop, self._loop = self._loop, None
        if loop is not None:
            if threading.current_thread() is self._thread:
                # Called from on_quit inside the loop: finish there, don't wait for ourselves.
                loop.create_task(self._shutdown(loop))
            else:
                try:
                    asyncio.run_coroutine_threadsafe(self._shutdown(loop), loop).result(STOP_TIMEOUT)
                except (concurrent.futures.TimeoutError, RuntimeError):
                    loop.call_soon_threadsafe(loop.stop)
                self._thread.join(STOP_TIMEOUT)
        self._close_sockets()

    # -- inside the loop ---------------------------------------------------------

    async def _serve_all(self):
        for spec, sock, handler in self._sockets:
            if spec.kind == "unix":
                server = await asyncio.start_unix_server(handler, sock=sock)
            else:
                server = await asyncio.start_server(handler, sock=sock)
            self._servers.append(server)

    async def _shutdown(self, loop):
        # Handlers of connections accepted from now on close them at once.
        self.qmp.closing = self.hmp.closing = True
        for server in self._servers:
            server.close()
        # What is queued (the last events: SHUTDOWN, cancelled jobs) goes out first,
        # for a bounded time: a client that does not read is not waited for.
        await self._drain(self.qmp.writers(), DRAIN_TIMEOUT)
        # Dropping every connection ends idle handlers; those waiting for a
        # command in the executor are cancelled (the command finishes on its own).
        for writer in self.qmp.writers() + self.hmp.writers():
            writer.transport.abort()
        # Accepts under way still create tasks meanwhile, so look again each round.
        for attempt in range(4):
            tasks = [task for task in asyncio.all_tasks(loop) if task is not asyncio.current_task()]
            if not tasks:
                break
            if attempt >= 2:
                for task in tasks:
                    task.cancel()
            await asyncio.wait(tasks, timeout=0.5)
        self._executor.shutdown(wait=False)
        loop.call_soon(loop.stop)

    @staticmethod
    async def _drain(writers, timeout):
        """Wait until the writers' buffers are sent (or closed), ``timeout`` seconds at most."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and any(
                not w.transport.is_closing() and w.transport.get_write_buffer_size() for w in writers):
            await asyncio.sleep(0.01)

    def _on_event(self, event: dict):
        """EventBus callback, in a job thread: encode now, send from the loop."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self.qmp.broadcast_raw, encode(event))
        except RuntimeError:
            pass        # the loop is closing: nobody is listening any more

    # -- sockets -----------------------------------------------------------------

    def _listen(self, spec) -> socket.socket:
        try:
            sock = bind_unix(spec.path) if spec.kind == "unix" else bind_tcp(spec.host, spec.port)
        except OSError as err:
            raise MonitorStartError("cannot listen on %s: %s"
                                    % (spec.describe(), err.strerror or err)) from err
        if spec.kind == "unix":
            self._unix_paths.append((spec.path, os.stat(spec.path).st_ino))
            self.addresses.append("unix:%s" % spec.path)
        else:
            host, port = sock.getsockname()[:2]
            self.addresses.append("tcp:%s:%d" % ("[%s]" % host if ":" in host else host, port))
            if not spec.is_loopback():
                print("blockmon: warning: %s listens on a non-loopback address; QMP and HMP have "
                      "no authentication: anyone who can connect controls every disk"
                      % self.addresses[-1], file=sys.stderr)
        return sock

    def _close_sockets(self):
        if not self._servers:
            for _, sock, _ in self._sockets:     # never handed to asyncio: ours to close
                sock.close()
        self._sockets = []
        for path, inode in self._unix_paths:
            try:
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            except OSError:
                pass
        self._unix_paths = []


def _run_loop(loop):
    try:
        loop.run_forever()
    finally:
        loop.close()


def _parse(spec, option: str) -> ChardevSpec:
    """A spec parsed by the command line is used as is; a text is parsed here."""
    if isinstance(spec, ChardevSpec):
        return spec
    try:
        return parse_chardev(spec)
    except ChardevError as err:
        raise ChardevError("%s: %s" % (option, err)) from None


def bind_unix(path: str) -> socket.socket:
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # umask is per process: other threads creating files meanwhile get a
        # stricter mode at worst.  chmod makes 0600 explicit whatever the umask.
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    return sock


def _remove_stale_socket(path: str):
    """QEMU unlinks an old socket file; we also refuse a live one and any non-socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError("%s exists and is not a socket" % path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)         # left over by a process that is gone
        return
    finally:
        probe.close()
    raise OSError("%s is in use by a running server" % path)


def bind_tcp(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    return sock
