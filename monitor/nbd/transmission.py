"""NBD transmission phase, server side: one connection's requests (proto.md "Transmission").

``Connection`` owns one client socket.  Its reader thread reads whole requests (the
28-byte header, and a WRITE's payload) and checks the budget.  READ, WRITE and
BLOCK_STATUS it answers itself, holding the replies back while more requests are
already buffered and sending them in one ``sendmsg``; FLUSH, TRIM and WRITE_ZEROES,
which may take long, go to the server's worker pool, whose replies go out under the
connection's send lock as they finish, so replies are out of order.  All block I/O
goes through the export's ``BlockBackend``; a READ is a read plan whose file ranges
go from the image file to the socket with ``sendfile`` once the device lock is
released (a reply with one goes out at once).  Memory is bounded: at most
``MAX_IN_FLIGHT`` requests and ``MAX_IN_FLIGHT_BYTES`` of payload per connection
(the reader stops reading, and the socket pushes back).

A bad magic, a WRITE longer than 32 MiB (its payload is not read) or a broken frame
ends this connection only; any other bad request gets the spec's error reply.
"""
import errno
import os
import socket
import threading

from commands.read_plan import FileRange
from images.errors import BlockError, ImageIOError

from . import protocol as p
from .block_status import BlockStatus

MAX_IN_FLIGHT = 16
MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024
READ_BUFFER = 256 * 1024
REPLY_BATCH_BYTES = 1024 * 1024     # inline replies held back at most this much
IOV_BATCH = 512                    # below IOV_MAX (1024)

_ALLOWED_FLAGS = {
    p.NBD_CMD_READ: p.NBD_CMD_FLAG_DF,
    p.NBD_CMD_WRITE: p.NBD_CMD_FLAG_FUA,
    p.NBD_CMD_FLUSH: 0,
    p.NBD_CMD_TRIM: p.NBD_CMD_FLAG_FUA,
    p.NBD_CMD_CACHE: 0,
    p.NBD_CMD_WRITE_ZEROES: (p.NBD_CMD_FLAG_FUA | p.NBD_CMD_FLAG_NO_HOLE
                             | p.NBD_CMD_FLAG_FAST_ZERO),
    p.NBD_CMD_BLOCK_STATUS: p.NBD_CMD_FLAG_REQ_ONE,
}
# Answered by the reader itself (a hop to a worker costs more than it buys, measured:
# the device's I/O lock serialises them anyway); FLUSH, TRIM and WRITE_ZEROES, which
# may take long, go to the workers so the reader goes on meanwhile.
_INLINE = (p.NBD_CMD_READ, p.NBD_CMD_BLOCK_STATUS, p.NBD_CMD_WRITE)
_WRITES = (p.NBD_CMD_WRITE, p.NBD_CMD_TRIM, p.NBD_CMD_WRITE_ZEROES)
_ERRNO_TO_NBD = {errno.EPERM: p.NBD_EPERM, errno.EROFS: p.NBD_EPERM, errno.EIO: p.NBD_EIO,
                 errno.ENOMEM: p.NBD_ENOMEM, errno.EINVAL: p.NBD_EINVAL,
                 errno.ENOSPC: p.NBD_ENOSPC, errno.EFBIG: p.NBD_ENOSPC,
                 errno.EOVERFLOW: p.NBD_EOVERFLOW, errno.ENOTSUP: p.NBD_ENOTSUP}


class RequestRefused(Exception):
    def __init__(self, error: int, message: str):
        super().__init__(message)
        self.error = error
        self.message = message


class Wire:
    """A connected socket read through our own buffer (so the reader knows whether more
    requests are already here) and written under a lock."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.send_lock = threading.Lock()
        self._buffer = bytearray(READ_BUFFER)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0

    def buffered(self) -> int:
        return self._end - self._start

    def _fill(self, need: int) -> None:
        if self._start == self._end:
            self._start = self._end = 0
        elif READ_BUFFER - self._start < need:      # move the tail to the front
            self._buffer[:self._end - self._start] = self._buffer[self._start:self._end]
            self._end -= self._start
            self._start = 0
        while self._end - self._start < need:
            got = self.sock.recv_into(self._view[self._end:])
            if not got:
                raise EOFError("the client closed the connection")
            self._end += got

    def unpack(self, layout):
        self._fill(layout.size)
        values = layout.unpack_from(self._buffer, self._start)
        self._start += layout.size
        return values

    def recv_exact(self, n: int) -> bytes:
        data = bytearray(n)
        self.recv_into(data)
        return bytes(data)

    def recv_into(self, buffer) -> None:
        view = memoryview(buffer)
        done = min(len(view), self.buffered())
        view[:done] = self._view[self._start:self._start + done]
        self._start += done
        while done < len(view):
            got = self.sock.recv_into(view[done:])
            if not got:
                raise EOFError("the client closed the connection")
            done += got

    def send(self, *parts) -> None:
        """Buffers in one sendmsg per run of them (no copy into a joined buffer); a
        ``FileRange`` goes from its file to the socket in the kernel (sendfile)."""
        with self.send_lock:
            buffers = []
            for part in parts:
                if isinstance(part, FileRange):
                    self._sendmsg(buffers)
                    buffers = []
                    self._sendfile(part)
                elif len(part):
                    buffers.append(memoryview(part).cast("B"))
            self._sendmsg(buffers)

    def _sendmsg(self, pending) -> None:
        while pending:
            sent = self.sock.sendmsg(pending[:IOV_BATCH])
            while pending and sent >= len(pending[0]):
                sent -= len(pending[0])
                pending.pop(0)
            if pending and sent:
                pending[0] = pending[0][sent:]

    def _sendfile(self, part) -> None:
        out, offset, left = self.sock.fileno(), part.offset, part.length
        while left:
            sent = os.sendfile(out, part.fd, offset, left)
            if not sent:        # the file ends early (a raw file shrank): zeros, as a read
                self._sendmsg([memoryview(bytes(left))])
                return
            offset, left = offset + sent, left - sent


class Replies:
    """Replies of inline requests, held back while more requests are already buffered,
    then sent together: one sendmsg (and one wake-up of the client) for a batch.
    Read plans whose file ranges a reply sends are held until it is sent, then closed."""

    def __init__(self, wire, batch=True):
        self.wire = wire
        self.batch = batch
        self.parts = []
        self.plans = []
        self.size = 0

    def __call__(self, *parts) -> None:
        if not self.batch:
            return self.wire.send(*parts)
        self.parts.extend(parts)
        self.size += sum(len(part) for part in parts)
        # Data sent from a file costs us no memory and the client waits for it: at once.
        if (self.size >= REPLY_BATCH_BYTES or len(self.parts) >= IOV_BATCH
                or any(isinstance(part, FileRange) for part in parts)):
            self.flush()

    def hold(self, plan) -> None:
        """Close ``plan`` once what was given so far is sent."""
        self.plans.append(plan)
        if not self.parts:
            self.release()

    def flush(self) -> None:
        try:
            if self.parts:
                parts, self.parts, self.size = self.parts, [], 0
                self.wire.send(*parts)
        finally:
            self.release()

    def release(self) -> None:
        plans, self.plans = self.plans, []
        for plan in plans:
            plan.close()


class Connection:
    """One client in transmission: ``serve()`` runs in the connection's own thread."""

    def __init__(self, wire: Wire, session, pool):
        self.wire = wire
        self.session = session
        self.export = session.export
        self.backend = session.export.backend
        self.pool = pool
        self._budget = threading.Condition()
        self._requests = 0
        self._bytes = 0
        self.closed = False

    # -- the reader ---------------------------------------------------------------
    def serve(self) -> None:
        replies = Replies(self.wire)
        try:
            while not self.closed:
                if self.wire.buffered() < p.REQUEST.size:
                    replies.flush()             # nothing else is waiting: answer now
                if not self._dispatch(replies, *self.wire.unpack(p.REQUEST)):
                    replies.flush()
                    return
        except (OSError, EOFError, ValueError):
            return                              # the peer went away, or we closed the socket
        finally:
            replies.release()
            self._wait_idle()

    def _dispatch(self, replies, magic, flags, kind, cookie, offset, length) -> bool:
        if magic != p.NBD_REQUEST_MAGIC:
            return False                        # the spec: terminate, nothing to answer
        if kind == p.NBD_CMD_DISC:
            return False
        payload = None
        if kind == p.NBD_CMD_WRITE:
            if length > p.NBD_MAX_BUFFER_SIZE:
                # QEMU's answer: EINVAL, then disconnect (the payload is never read)
                self._reply_error(replies, kind, cookie, p.NBD_EINVAL,
                                  "len (%d) is larger than max len (%d)"
                                  % (length, p.NBD_MAX_BUFFER_SIZE))
                return False
            self._reserve(length)
            payload = bytearray(length)
            self.wire.recv_into(payload)
        else:
            self._reserve(0)
        if kind in _INLINE:
            self._handle(replies, flags, kind, cookie, offset, length, payload)
            return True
        self.pool.submit(self._handle, Replies(self.wire, batch=False), flags, kind, cookie, offset, length, payload)
        return True

    def _reserve(self, nbytes: int) -> None:
        with self._budget:
            while self._requests and (self._requests >= MAX_IN_FLIGHT
                                      or self._bytes + nbytes > MAX_IN_FLIGHT_BYTES):
                self._budget.wait()
            self._requests += 1
            self._bytes += nbytes

    def _release(self, nbytes: int) -> None:
        with self._budget:
            self._requests -= 1
            self._bytes -= nbytes
            self._budget.notify_all()

    def _wait_idle(self) -> None:
        with self._budget:
            while self._requests:
                self._budget.wait()

    def close(self) -> None:
        """Drop the client: its reader sees EOF, replies under way fail quietly."""
        self.closed = True
        try:
            self.wire.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- the workers ----------------------------------------------------------------
    def _handle(self, send, flags, kind, cookie, offset, length, payload) -> None:
        """One request; ``send(*parts)`` sends (or, inline, batches) its reply."""
        reserved = len(payload) if payload is not None else 0
        try:
            self._check(flags, kind, offset, length)
            self._perform(send, flags, kind, cookie, offset, length, payload)
        except RequestRefused as err:
            self._reply_error(send, kind, cookie, err.error, err.message)
        except ImageIOError as err:
            self._reply_error(send, kind, cookie, _ERRNO_TO_NBD.get(err.errno, p.NBD_EIO),
                              err.desc)
        except BlockError as err:
            self._reply_error(send, kind, cookie, p.NBD_EIO, err.desc)
        except OSError:
            self.close()                        # the reply could not be sent
        finally:
            self._release(reserved)

    def _check(self, flags, kind, offset, length) -> None:
        allowed = _ALLOWED_FLAGS.get(kind)
        if allowed is None:
            raise RequestRefused(p.NBD_EINVAL, "unsupported command %d" % kind)
        if flags & ~allowed or (flags & p.NBD_CMD_FLAG_DF and not self.session.structured):
            raise RequestRefused(p.NBD_EINVAL, "unsupported flags %#x" % flags)
        if kind in _WRITES and not self.export.writable:
            raise RequestRefused(p.NBD_EPERM, "Export is read-only")
        if kind == p.NBD_CMD_READ and length > p.NBD_MAX_BUFFER_SIZE:
            raise RequestRefused(p.NBD_EINVAL, "len (%d) is larger than max len (%d)"
                                 % (length, p.NBD_MAX_BUFFER_SIZE))
        if offset + length > self.backend.virtual_size:
            raise RequestRefused(p.NBD_EINVAL, "operation past EOF")
        if kind == p.NBD_CMD_BLOCK_STATUS and (not self.session.contexts or not length):
            raise RequestRefused(p.NBD_EINVAL, "need non-zero length and a meta context")
        if flags & p.NBD_CMD_FLAG_FAST_ZERO and not self.backend.zeroes_are_fast(offset, length):
            raise RequestRefused(p.NBD_ENOTSUP, "fast zeroing not possible here")

    def _perform(self, send, flags, kind, cookie, offset, length, payload) -> None:
        backend = self.backend
        fua = bool(flags & p.NBD_CMD_FLAG_FUA) or self.export.writethrough
        if kind == p.NBD_CMD_READ:
            return self._read(send, flags, cookie, offset, length)
        if kind == p.NBD_CMD_BLOCK_STATUS:
            return self._block_status(send, flags, cookie, offset, length)
        if kind == p.NBD_CMD_WRITE:
            backend.write(offset, payload, fua=fua)
        elif kind == p.NBD_CMD_WRITE_ZEROES:
            backend.write_zeroes(offset, length, fua=fua)
        elif kind == p.NBD_CMD_TRIM:
            backend.discard(offset, length)
            if fua:
                backend.flush()
        elif kind == p.NBD_CMD_FLUSH:
            backend.flush()
        send(p.simple_reply(0, cookie))         # CACHE is advice: nothing to do

    def _read(self, send, flags, cookie, offset, length) -> None:
        if not self.session.structured:
            data = self.backend.read(offset, length)
            return send(p.simple_reply(0, cookie), data)
        if not length:
            return send(p.none_chunk(cookie))
        plan = self.backend.plan_read(offset, length)     # the walk comes from the cache
        try:
            if flags & p.NBD_CMD_FLAG_DF:       # one data chunk: holes as zeros
                send(p.data_chunk_header(cookie, offset, length, True),
                     *(bytes(piece.length) if piece.data is None else piece.data
                       for piece in plan.pieces))
            else:
                send(*sparse_reply(cookie, plan.pieces))
        finally:
            send.hold(plan)

    def _block_status(self, send, flags, cookie, offset, length) -> None:
        contexts = list(self.session.contexts.items())
        answer = BlockStatus(self.backend, self.export, offset, length,
                             flags & p.NBD_CMD_FLAG_REQ_ONE)
        for index, (context_id, name) in enumerate(contexts):
            send(p.block_status_chunk(cookie, context_id, answer.extents(name),
                                      index == len(contexts) - 1))

    def _reply_error(self, send, kind, cookie, error, message) -> None:
        try:
            if self.session.structured and kind in (p.NBD_CMD_READ, p.NBD_CMD_BLOCK_STATUS):
                send(p.error_chunk(cookie, error, message))
            else:
                send(p.simple_reply(error, cookie))
        except OSError:
            self.close()


def sparse_reply(cookie, pieces):
    """A structured read's chunks: a hole chunk per hole, and one data chunk for each
    stretch of neighbouring data pieces (whatever layer or file each comes from), so the
    client reads one header per stretch."""
    parts, index = [], 0
    while index < len(pieces):
        start, size, data = pieces[index]
        index += 1
        if data is None:
            parts.append(p.hole_chunk(cookie, start, size, index == len(pieces)))
            continue
        stretch = [data]
        while index < len(pieces) and pieces[index].data is not None:
            size += pieces[index].length
            stretch.append(pieces[index].data)
            index += 1
        parts.append(p.data_chunk_header(cookie, start, size, index == len(pieces)))
        parts += stretch
    return parts
