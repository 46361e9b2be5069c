"""Fuzzing blockmon's NBD server over real sockets: random and truncated negotiation
frames, wrong magics, huge lengths, option floods, malformed requests.  Bounded
counts, a fixed seed.  Afterwards the daemon still runs, a client connected before
the fuzzing still reads the right bytes, and the image files are unchanged.

Frames are written with struct and the numbers of doc/proto.md, independently of
the server's own protocol module."""
import hashlib
import os
import random
import socket
import struct

import pytest

from conftest import run
from nbd_helpers import Blockmon, build_chain

NBDMAGIC, IHAVEOPT, REPLY_MAGIC = 0x4E42444D41474943, 0x49484156454F5054, 0x3E889045565A9
REQUEST_MAGIC, SIMPLE_MAGIC, STRUCTURED_MAGIC = 0x25609513, 0x67446698, 0x668E33EF
OPT_GO, OPT_LIST, OPT_STRUCTURED, OPT_SET_META = 7, 3, 8, 10


class RawClient:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(60)        # a hang fails the test instead of blocking it
        self.sock.connect(path)

    def recv(self, n):
        data = b""
        while len(data) < n:
            piece = self.sock.recv(n - len(data))
            if not piece:
                raise EOFError
            data += piece
        return data

    def greet(self):
        magic, opt, flags = struct.unpack(">QQH", self.recv(18))
        assert (magic, opt) == (NBDMAGIC, IHAVEOPT) and flags & 1
        self.sock.sendall(struct.pack(">I", 3))         # fixed newstyle, no zeroes

    def option(self, option, data=b""):
        self.sock.sendall(struct.pack(">QII", IHAVEOPT, option, len(data)) + data)
        replies = []
        while True:
            magic, opt, kind, length = struct.unpack(">QIII", self.recv(20))
            assert magic == REPLY_MAGIC and opt == option
            replies.append((kind, self.recv(length)))
            if kind == 1 or kind & (1 << 31):
                return replies

    def go(self, name):
        self.greet()
        assert self.option(OPT_STRUCTURED)[-1][0] == 1
        query = b"base:allocation"
        meta = (struct.pack(">I", len(name)) + name + struct.pack(">II", 1, len(query)) + query)
        assert self.option(OPT_SET_META, meta)[-1][0] == 1
        replies = self.option(OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
        assert replies[-1][0] == 1

    def request(self, kind, offset, length, flags=0, cookie=7, payload=b""):
        self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, kind, cookie, offset,
                                      length) + payload)

    def reply(self):
        """(error, data) of one whole reply; structured chunks are gathered until DONE."""
        magic = struct.unpack(">I", self.recv(4))[0]
        if magic == SIMPLE_MAGIC:
            error, _cookie = struct.unpack(">IQ", self.recv(12))
            return error, None
        assert magic == STRUCTURED_MAGIC
        chunks = []
        while True:
            flags, kind, _cookie, length = struct.unpack(">HHQI", self.recv(16))
            chunks.append((kind, self.recv(length)))
            if flags & 1:
                break
            assert struct.unpack(">I", self.recv(4))[0] == STRUCTURED_MAGIC
        errors = [struct.unpack(">I", body[:4])[0] for kind, body in chunks if kind & (1 << 15)]
        return (errors[0] if errors else 0), chunks

    def read(self, offset, length):
        self.request(0, offset, length)
        error, chunks = self.reply()
        assert error == 0
        data = bytearray(length)
        for kind, body in chunks:
            start = struct.unpack(">Q", body[:8])[0] - offset
            if kind == 1:
                data[start:start + len(body) - 8] = body[8:]
        return bytes(data)

    def close(self):
        self.sock.close()


def digest(directory):
    result = {}
    for name in ("A.qcow2", "D.qcow2"):
        with open(os.path.join(directory, name), "rb") as f:
            result[name] = hashlib.sha256(f.read()).hexdigest()
    return result


def fuzz_negotiation(path, rng):
    client = RawClient(path)
    try:
        client.greet()
        for _ in range(rng.randrange(1, 6)):
            choice = rng.randrange(6)
            if choice == 0:                 # garbage: what follows is undefined, so stop
                client.sock.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))))
                break
            elif choice == 1:               # a huge option length
                client.sock.sendall(struct.pack(">QII", IHAVEOPT, OPT_LIST, 0xFFFFFFF0))
                break
            elif choice == 2:               # wrong magic
                client.sock.sendall(struct.pack(">QII", 0x1234, OPT_GO, 0))
                break
            elif choice == 3:               # unknown option, refused as unsupported
                assert client.option(rng.randrange(11, 1 << 16))[-1][0] == (1 << 31) | 1
            elif choice == 4:               # GO with a lying name length: ERR_INVALID
                assert client.option(OPT_GO, struct.pack(">I", 0xFFFF) + b"xy")[-1][0] == \
                    (1 << 31) | 3
            else:                           # a truncated header, then the end
                client.sock.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, 40)[:rng.randrange(1, 16)])
                break
    except (OSError, EOFError):
        pass                                # the server may drop a client that misbehaves
    finally:
        client.close()


def fuzz_requests(path, rng):
    client = RawClient(path)
    try:
        client.go(b"D")
        for _ in range(rng.randrange(1, 8)):
            choice = rng.randrange(7)
            if choice == 0:                 # read past the end: EINVAL, connection stays
                client.request(0, 15 << 20, 2 << 20)
                assert client.reply()[0] == 22
            elif choice == 1:               # a huge read: EINVAL
                client.request(0, 0, 0xFFFFFFFF)
                assert client.reply()[0] == 22
            elif choice == 2:               # a write on a read-only export: EPERM
                client.request(1, 0, 512, payload=b"\xff" * 512)
                assert client.reply()[0] == 1
            elif choice == 3:               # an unknown command or flag: EINVAL
                client.request(rng.choice((9, 77, 0xFFFF)), 0, 0, flags=rng.randrange(1 << 16))
                assert client.reply()[0] == 22
            elif choice == 4:               # a huge write: the server disconnects
                client.request(1, 0, 0xFFFFFFF0)
                break
            elif choice == 5:               # wrong magic: the server disconnects
                client.sock.sendall(bytes(rng.randrange(256) for _ in range(28)))
                break
            else:                           # a truncated request, then the end
                client.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, 0, 1, 0, 4096)[:11])
                break
    except (OSError, EOFError):
        pass
    finally:
        client.close()


@pytest.fixture
def daemon(tmp_path):
    top = build_chain(str(tmp_path))
    blockmon = Blockmon(top, str(tmp_path), exports=("type=nbd,id=D,node-name=virtio0,name=D",))
    yield blockmon, str(tmp_path)
    blockmon.stop()


def test_fuzzed_frames_never_touch_another_client_or_the_image(daemon):
    blockmon, directory = daemon
    before = digest(directory)
    witness = RawClient(blockmon.sock)
    witness.go(b"D")
    expected = witness.read(0, 2 << 20)
    rng = random.Random(2026)
    for _ in range(60):
        fuzz_negotiation(blockmon.sock, rng)
        fuzz_requests(blockmon.sock, rng)
    assert witness.read(0, 2 << 20) == expected
    assert expected[:65536] == b"\xa1" * 65536 and expected[512 << 10:(512 << 10) + 4096] == b"\xd4" * 4096
    witness.close()
    assert blockmon.process.poll() is None
    read = run("qemu-io", "-r", "-f", "raw", "-c", "read -P 0xa1 0 64K", blockmon.uri())
    assert "read 65536/65536 bytes at offset 0" in read.stdout
    blockmon.stop()
    assert digest(directory) == before


def test_an_option_flood_ends_only_that_connection(daemon):
    blockmon, _ = daemon
    flood = RawClient(blockmon.sock)
    flood.greet()
    payload = struct.pack(">QII", IHAVEOPT, 99, 0) * 5000
    try:
        flood.sock.sendall(payload)
        replies = 0
        while True:
            header = flood.recv(20)
            replies += 1
            flood.recv(struct.unpack(">QIII", header)[3])
    except (OSError, EOFError):
        pass
    assert 0 < replies < 5000               # answered, then dropped: memory stays bounded
    flood.close()
    assert "read 4096/4096" in run("qemu-io", "-r", "-f", "raw", "-c", "read 0 4K",
                                   blockmon.uri()).stdout


def test_many_requests_in_flight_each_answered_under_its_cookie(daemon):
    blockmon, _ = daemon
    client = RawClient(blockmon.sock)
    client.go(b"D")
    frames = b""
    expected = {}
    for cookie in range(1, 65):
        kind = (0, 3, 7)[cookie % 3]            # READ, FLUSH, BLOCK_STATUS, all at once
        offset = (cookie * 192 * 1024) % (15 << 20)
        frames += struct.pack(">IHHQQI", REQUEST_MAGIC, 0, kind, cookie, offset, 128 * 1024)
        expected[cookie] = kind
    client.sock.sendall(frames)
    answered = {}
    for _ in expected:
        magic = struct.unpack(">I", client.recv(4))[0]
        if magic == SIMPLE_MAGIC:
            error, cookie = struct.unpack(">IQ", client.recv(12))
            answered[cookie] = error
            continue
        while True:
            flags, _kind, cookie, length = struct.unpack(">HHQI", client.recv(16))
            client.recv(length)
            if flags & 1:
                answered[cookie] = 0
                break
            assert struct.unpack(">I", client.recv(4))[0] == STRUCTURED_MAGIC
    assert answered == {cookie: 0 for cookie in expected}
    client.close()
