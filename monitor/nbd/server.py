"""The NBD server: a listening socket, its connections and the worker pool.

``NbdServer(exports, address, max_connections)`` is the export service the command
core is given (``commands.exports``): it binds at once (errors are CommandErrors with
QEMU's texts), accepts in a thread of its own, runs each connection's negotiation
and reader in a thread per connection, and the block I/O in a shared pool.
``exports`` answers ``find(name)`` and ``list()``; ``clients(export)``,
``drop_clients(export)`` and ``stop()`` are what the commands call.

With ``max_connections`` set, the server stops accepting while that many clients are
connected (QEMU does the same); the others wait in the listen backlog.  Unix sockets
are created 0600; a TCP listener on a non-loopback address prints the same kind of
warning as the QMP server, since NBD has no authentication here (no TLS).
"""
import concurrent.futures
import os
import select
import socket
import sys
import threading

from commands.errors import CommandError
from monitor.chardev import ChardevSpec
from monitor.servers import bind_tcp, bind_unix

from . import protocol as p
from .negotiation import negotiate
from .transmission import Connection, Wire

HANDSHAKE_TIMEOUT = 30          # seconds a client may take to choose an export
WORKERS = 8
JOIN_TIMEOUT = 10
SEND_BUFFER = 4 * 1024 * 1024
# While a job's thread runs Python, a guest request waits for the interpreter up to
# the switch interval at each step (after every recv, lock and pwrite): Python's
# default 5 ms shows as guest write latency during a stream; 0.5 ms bounds it.
GUEST_SWITCH_INTERVAL = 0.0005


class NbdServer:
    def __init__(self, exports, address: dict, max_connections: int = 0):
        self.exports = exports
        self.address = address
        self.max_connections = max_connections
        self._slots = threading.Semaphore(max_connections) if max_connections else None
        self._lock = threading.Lock()
        self._connections = {}          # Connection -> (export, peer, thread)
        self._handshakes = set()        # sockets still negotiating
        self._pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="nbd-io")
        self._stopping = False
        self._unix_inode = None
        self._sock = self._listen(address)
        sys.setswitchinterval(min(sys.getswitchinterval(), GUEST_SWITCH_INTERVAL))
        self.description = self._describe()
        self._thread = threading.Thread(target=self._accept_loop, name="nbd-accept", daemon=True)
        self._thread.start()

    # -- listening --------------------------------------------------------------
    def _listen(self, address):
        if address["type"] == "unix":
            try:
                sock = bind_unix(address["path"])
            except OSError as err:
                raise CommandError("Failed to bind socket to %s: %s"
                                   % (address["path"], err.strerror or err)) from err
            self._unix_inode = os.stat(address["path"]).st_ino
            return sock
        host, port = address["host"], address["port"]
        try:
            return bind_tcp(host, int(port))
        except socket.gaierror as err:
            raise CommandError("address resolution failed for %s:%s: %s"
                               % (host, port, err.strerror)) from err
        except (OSError, ValueError) as err:
            raise CommandError("Failed to bind socket: %s"
                               % (getattr(err, "strerror", None) or err)) from err

    def _describe(self):
        if self.address["type"] == "unix":
            return "unix:%s" % self.address["path"]
        host, port = self._sock.getsockname()[:2]
        text = "tcp:%s:%d" % ("[%s]" % host if ":" in host else host, port)
        if not ChardevSpec("tcp", text, host=self.address["host"], port=port).is_loopback():
            print("blockmon: warning: %s listens on a non-loopback address; NBD has no "
                  "authentication: anyone who can connect reads (and, for writable "
                  "exports, writes) the exported disks" % text, file=sys.stderr)
        return text

    @property
    def port(self):
        return self._sock.getsockname()[1] if self.address["type"] == "inet" else None

    def _accept_loop(self):
        while not self._stopping:
            if self._slots is not None and not self._wait_for_slot():
                return
            try:
                client, peer = self._sock.accept()
            except OSError:
                if self._slots is not None:
                    self._slots.release()
                return                      # the listener was closed: stop()
            if self._stopping:
                client.close()
                return
            threading.Thread(target=self._client, args=(client, peer), daemon=True,
                             name="nbd-client").start()

    def _wait_for_slot(self):
        while not self._slots.acquire(timeout=0.2):
            if self._stopping:
                return False
        return True

    # -- one client ---------------------------------------------------------------
    def _client(self, sock, peer):
        connection = None
        try:
            connection = self._negotiate(sock, peer)
            if connection is not None:
                connection.serve()
        finally:
            with self._lock:
                self._connections.pop(connection, None)
                self._handshakes.discard(sock)
            sock.close()
            if self._slots is not None:
                self._slots.release()

    def _negotiate(self, sock, peer):
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._stopping:
                return None
            self._handshakes.add(sock)
        sock.settimeout(HANDSHAKE_TIMEOUT)
        wire = Wire(sock)
        try:
            session = negotiate(wire, self.exports)
        except (OSError, EOFError, ValueError, p.ProtocolError):
            return None
        if session is None:
            return None
        sock.settimeout(None)
        # Room for a few whole replies in the kernel: a large read then costs one sendmsg
        # that does not wait for the client to drain the socket.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        connection = Connection(wire, session, self._pool)
        with self._lock:
            self._handshakes.discard(sock)
            if self._stopping or session.export.shutting_down:
                return None
            self._connections[connection] = (session.export, _peer_text(sock, peer),
                                             threading.current_thread())
        return connection

    # -- the service the commands use -------------------------------------------------
    def clients(self, export):
        """Peers connected to ``export``.  A client that has hung up (its DISC or EOF
        not yet read by its thread) is waited for, not counted: right after
        ``qemu-io`` exits, a safe remove must not find it still there."""
        with self._lock:
            chosen = [(c, t) for c, (exp, _, t) in self._connections.items() if exp is export]
        for connection, thread in chosen:
            if _hung_up(connection.wire.sock) and thread is not threading.current_thread():
                thread.join(JOIN_TIMEOUT)
        with self._lock:
            return [peer for exp, peer, _ in self._connections.values() if exp is export]

    def drop_clients(self, export=None):
        """Disconnect every client of ``export`` (all clients when None) and wait for them."""
        with self._lock:
            chosen = [(c, t) for c, (exp, _, t) in self._connections.items()
                      if export is None or exp is export]
        for connection, _ in chosen:
            connection.close()
        for _, thread in chosen:
            if thread is not threading.current_thread():
                thread.join(JOIN_TIMEOUT)

    def stop(self):
        with self._lock:
            self._stopping = True
            handshakes = list(self._handshakes)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        for sock in handshakes:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.drop_clients()
        self._thread.join(JOIN_TIMEOUT)
        self._pool.shutdown(wait=True)
        if self._unix_inode is not None:
            try:
                if os.stat(self.address["path"]).st_ino == self._unix_inode:
                    os.unlink(self.address["path"])
            except OSError:
                pass


def _hung_up(sock):
    """True once the peer closed its side (POLLRDHUP, even with its DISC still unread)."""
    poller = select.poll()
    try:
        poller.register(sock, select.POLLRDHUP)
    except (OSError, ValueError):
        return True                         # already closed here
    return bool(poller.poll(0))


def _peer_text(sock, peer):
    if sock.family == socket.AF_UNIX:
        return "unix"
    host, port = peer[:2]
    return "%s:%d" % ("[%s]" % host if ":" in host else host, port)
