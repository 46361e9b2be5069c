"""The NBD wire format: constants, struct layouts, pure encoders and decoders; no sockets.

Names and values follow the NBD protocol specification (NetworkBlockDevice/nbd,
doc/proto.md), so every line can be checked against it.  All integers are big-endian.
"""
import struct

# -- handshake (proto.md "Fixed newstyle negotiation") -----------------------------
NBDMAGIC = 0x4E42444D41474943           # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054           # "IHAVEOPT"
REPLY_MAGIC = 0x3E889045565A9           # option reply magic
NBD_FLAG_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_NO_ZEROES = 1 << 1
NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_C_NO_ZEROES = 1 << 1

NBD_OPT_EXPORT_NAME = 1
NBD_OPT_ABORT = 2
NBD_OPT_LIST = 3
NBD_OPT_STARTTLS = 5
NBD_OPT_INFO = 6
NBD_OPT_GO = 7
NBD_OPT_STRUCTURED_REPLY = 8
NBD_OPT_LIST_META_CONTEXT = 9
NBD_OPT_SET_META_CONTEXT = 10

NBD_REP_ACK = 1
NBD_REP_SERVER = 2
NBD_REP_INFO = 3
NBD_REP_META_CONTEXT = 4
NBD_REP_FLAG_ERROR = 1 << 31
NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR | 1
NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR | 2
NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR | 3
NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR | 4
NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR | 5
NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR | 6
NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR | 7
NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR | 8
NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR | 9

NBD_INFO_EXPORT = 0
NBD_INFO_NAME = 1
NBD_INFO_DESCRIPTION = 2
NBD_INFO_BLOCK_SIZE = 3

# -- transmission flags --------------------------------------------------------------
NBD_FLAG_HAS_FLAGS = 1 << 0
NBD_FLAG_READ_ONLY = 1 << 1
NBD_FLAG_SEND_FLUSH = 1 << 2
NBD_FLAG_SEND_FUA = 1 << 3
NBD_FLAG_ROTATIONAL = 1 << 4
NBD_FLAG_SEND_TRIM = 1 << 5
NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6
NBD_FLAG_SEND_DF = 1 << 7
NBD_FLAG_CAN_MULTI_CONN = 1 << 8
NBD_FLAG_SEND_CACHE = 1 << 10
NBD_FLAG_SEND_FAST_ZERO = 1 << 11

# -- requests and replies ------------------------------------------------------------
NBD_REQUEST_MAGIC = 0x25609513
NBD_SIMPLE_REPLY_MAGIC = 0x67446698
NBD_STRUCTURED_REPLY_MAGIC = 0x668E33EF

NBD_CMD_READ = 0
NBD_CMD_WRITE = 1
NBD_CMD_DISC = 2
NBD_CMD_FLUSH = 3
NBD_CMD_TRIM = 4
NBD_CMD_CACHE = 5
NBD_CMD_WRITE_ZEROES = 6
NBD_CMD_BLOCK_STATUS = 7

NBD_CMD_FLAG_FUA = 1 << 0
NBD_CMD_FLAG_NO_HOLE = 1 << 1
NBD_CMD_FLAG_DF = 1 << 2
NBD_CMD_FLAG_REQ_ONE = 1 << 3
NBD_CMD_FLAG_FAST_ZERO = 1 << 4

NBD_REPLY_FLAG_DONE = 1 << 0
NBD_REPLY_TYPE_NONE = 0
NBD_REPLY_TYPE_OFFSET_DATA = 1
NBD_REPLY_TYPE_OFFSET_HOLE = 2
NBD_REPLY_TYPE_BLOCK_STATUS = 5
NBD_REPLY_TYPE_ERROR = (1 << 15) + 1

NBD_STATE_HOLE = 1 << 0                 # base:allocation
NBD_STATE_ZERO = 1 << 1
NBD_STATE_DIRTY = 1 << 0                # qemu:dirty-bitmap:NAME

# NBD error values (proto.md "Error values"), not the host's errno numbers
NBD_EPERM = 1
NBD_EIO = 5
NBD_ENOMEM = 12
NBD_EINVAL = 22
NBD_ENOSPC = 28
NBD_EOVERFLOW = 75
NBD_ENOTSUP = 95
NBD_ESHUTDOWN = 108

NBD_MAX_BUFFER_SIZE = 32 * 1024 * 1024  # QEMU's largest READ/WRITE payload
NBD_MAX_STRING_SIZE = 4096              # export names, descriptions, context names

CONTEXT_BASE_ALLOCATION = "base:allocation"
CONTEXT_ALLOCATION_DEPTH = "qemu:allocation-depth"
CONTEXT_DIRTY_BITMAP = "qemu:dirty-bitmap:"      # + the bitmap's name

HANDSHAKE = struct.Struct(">QQH")       # NBDMAGIC, IHAVEOPT, handshake flags
CLIENT_FLAGS = struct.Struct(">I")
OPTION_HEADER = struct.Struct(">QII")   # IHAVEOPT, option, length
OPTION_REPLY = struct.Struct(">QIII")   # REPLY_MAGIC, option, reply type, length
EXPORT_NAME_REPLY = struct.Struct(">QH")  # size, transmission flags
REQUEST = struct.Struct(">IHHQQI")      # magic, flags, type, cookie, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")    # magic, error, cookie
CHUNK = struct.Struct(">IHHQI")         # magic, flags, type, cookie, length
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
HOLE_PAYLOAD = struct.Struct(">QI")     # offset, hole size
ERROR_PAYLOAD = struct.Struct(">IH")    # error, message length
EXTENT = struct.Struct(">II")           # length, flags
INFO_EXPORT = struct.Struct(">HQH")     # NBD_INFO_EXPORT, size, transmission flags
INFO_BLOCK_SIZE = struct.Struct(">HIII")  # NBD_INFO_BLOCK_SIZE, minimum, preferred, maximum


class ProtocolError(Exception):
    """A frame the peer should never have sent: the connection ends."""


def handshake() -> bytes:
    return HANDSHAKE.pack(NBDMAGIC, IHAVEOPT, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES)


def option_reply(option: int, reply_type: int, payload: bytes = b"") -> bytes:
    return OPTION_REPLY.pack(REPLY_MAGIC, option, reply_type, len(payload)) + payload


def info_export(size: int, flags: int) -> bytes:
    return INFO_EXPORT.pack(NBD_INFO_EXPORT, size, flags)


def info_string(info_type: int, text: str) -> bytes:
    return U16.pack(info_type) + text.encode()


def info_block_size(minimum: int, preferred: int, maximum: int) -> bytes:
    return INFO_BLOCK_SIZE.pack(NBD_INFO_BLOCK_SIZE, minimum, preferred, maximum)


def server_entry(name: str, description: str) -> bytes:
    encoded = name.encode()
    return U32.pack(len(encoded)) + encoded + description.encode()


def meta_context_entry(context_id: int, name: str) -> bytes:
    return U32.pack(context_id) + name.encode()


def simple_reply(error: int, cookie: int) -> bytes:
    return SIMPLE_REPLY.pack(NBD_SIMPLE_REPLY_MAGIC, error, cookie)


def chunk_header(flags: int, reply_type: int, cookie: int, length: int) -> bytes:
    return CHUNK.pack(NBD_STRUCTURED_REPLY_MAGIC, flags, reply_type, cookie, length)


def data_chunk_header(cookie: int, offset: int, length: int, done: bool) -> bytes:
    """The header and offset of an OFFSET_DATA chunk; the ``length`` data bytes follow."""
    return chunk_header(NBD_REPLY_FLAG_DONE if done else 0, NBD_REPLY_TYPE_OFFSET_DATA,
                        cookie, 8 + length) + U64.pack(offset)


def hole_chunk(cookie: int, offset: int, length: int, done: bool) -> bytes:
    return chunk_header(NBD_REPLY_FLAG_DONE if done else 0, NBD_REPLY_TYPE_OFFSET_HOLE,
                        cookie, HOLE_PAYLOAD.size) + HOLE_PAYLOAD.pack(offset, length)


def none_chunk(cookie: int) -> bytes:
    return chunk_header(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie, 0)


def error_chunk(cookie: int, error: int, message: str = "") -> bytes:
    text = message.encode()[:NBD_MAX_STRING_SIZE]
    return (chunk_header(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie,
                         ERROR_PAYLOAD.size + len(text)) + ERROR_PAYLOAD.pack(error, len(text)) + text)


def block_status_chunk(cookie: int, context_id: int, extents, done: bool) -> bytes:
    """``extents``: (length, flags) pairs."""
    body = U32.pack(context_id) + b"".join(EXTENT.pack(n, f) for n, f in extents)
    return chunk_header(NBD_REPLY_FLAG_DONE if done else 0, NBD_REPLY_TYPE_BLOCK_STATUS,
                        cookie, len(body)) + body


class Reader:
    """Pulls length-prefixed fields out of an option's data; ProtocolError-free:
    ``ok`` turns false when the data ends early, so the caller can answer ERR_INVALID."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0
        self.ok = True

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            self.ok = False
            self.pos = len(self.data)
            return b""
        piece = self.data[self.pos:self.pos + n]
        self.pos += n
        return piece

    def u16(self) -> int:
        raw = self.take(2)
        return U16.unpack(raw)[0] if len(raw) == 2 else 0

    def u32(self) -> int:
        raw = self.take(4)
        return U32.unpack(raw)[0] if len(raw) == 4 else 0

    def string32(self, limit: int = NBD_MAX_STRING_SIZE):
        """A u32 length and that many bytes as text; None if too long or not UTF-8."""
        length = self.u32()
        if length > limit or self.pos + length > len(self.data):
            self.ok = False
            return None
        try:
            return self.take(length).decode()
        except UnicodeDecodeError:
            return None

    @property
    def at_end(self) -> bool:
        return self.pos == len(self.data)
