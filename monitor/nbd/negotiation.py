"""NBD fixed-newstyle negotiation, server side (proto.md "Option haggling").

``negotiate(wire, exports)`` runs the handshake on a connected ``wire`` (an object
with ``recv_exact(n)`` and ``send(bytes)``) and returns a ``Session`` for the export
the client chose, or None when the client aborted.  ``exports`` answers
``find(name)`` and ``list()`` with export objects (``name``, ``description``,
``size``, ``writable``, ``allocation_depth``).  A malformed frame raises
``ProtocolError``; refused options get the spec's error replies and haggling goes on.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional

from . import protocol as p

MAX_OPTION_LENGTH = 64 * 1024      # larger option data ends the connection
MAX_OPTIONS = 4096                 # an option flood ends the connection
MAX_META_QUERIES = 128
BLOCK_SIZE_MINIMUM, BLOCK_SIZE_PREFERRED = 1, 4096


@dataclass
class Session:
    export: object
    flags: int                          # transmission flags sent to the client
    structured: bool
    contexts: Dict[int, str] = field(default_factory=dict)   # context id -> name


def transmission_flags(export, structured: bool) -> int:
    """qemu-nbd 7.2's flags (read-only: no TRIM/WRITE_ZEROES); CAN_MULTI_CONN for
    writable exports too: every connection writes into the same image object, so
    one flush covers what all of them wrote."""
    flags = (p.NBD_FLAG_HAS_FLAGS | p.NBD_FLAG_SEND_FLUSH | p.NBD_FLAG_SEND_FUA
             | p.NBD_FLAG_SEND_CACHE | p.NBD_FLAG_CAN_MULTI_CONN)
    if export.writable:
        flags |= p.NBD_FLAG_SEND_TRIM | p.NBD_FLAG_SEND_WRITE_ZEROES | p.NBD_FLAG_SEND_FAST_ZERO
    else:
        flags |= p.NBD_FLAG_READ_ONLY
    if structured:
        flags |= p.NBD_FLAG_SEND_DF
    return flags


def contexts_of(export):
    names = [p.CONTEXT_BASE_ALLOCATION]
    if export.allocation_depth:
        names.append(p.CONTEXT_ALLOCATION_DEPTH)
    return names + [context for context, _bitmap in export.bitmaps]


class _Haggler:
    def __init__(self, wire, exports):
        self.wire = wire
        self.exports = exports
        self.structured = False
        self.no_zeroes = False
        self.meta_export = None          # the export name SET_META_CONTEXT chose for
        self.contexts: Dict[int, str] = {}

    def reply(self, option, reply_type, payload=b""):
        self.wire.send(p.option_reply(option, reply_type, payload))

    def refuse(self, option, reply_type, message):
        self.reply(option, reply_type, message.encode()[:p.NBD_MAX_STRING_SIZE])

    def run(self) -> Optional[Session]:
        self.wire.send(p.handshake())
        (client_flags,) = p.CLIENT_FLAGS.unpack(self.wire.recv_exact(4))
        if client_flags & ~(p.NBD_FLAG_C_FIXED_NEWSTYLE | p.NBD_FLAG_C_NO_ZEROES):
            raise p.ProtocolError("unknown client flags %#x" % client_flags)
        self.no_zeroes = bool(client_flags & p.NBD_FLAG_C_NO_ZEROES)
        for _ in range(MAX_OPTIONS):
            magic, option, length = p.OPTION_HEADER.unpack(self.wire.recv_exact(p.OPTION_HEADER.size))
            if magic != p.IHAVEOPT:
                raise p.ProtocolError("bad option magic %#x" % magic)
            if length > MAX_OPTION_LENGTH:
                raise p.ProtocolError("option %d of %d bytes" % (option, length))
            data = self.wire.recv_exact(length) if length else b""
            outcome = self.option(option, data)
            if outcome is not None:
                return outcome or None
        raise p.ProtocolError("more than %d options" % MAX_OPTIONS)

    def option(self, option, data):
        """One option; a Session ends haggling, False ends the connection, None goes on."""
        if option == p.NBD_OPT_EXPORT_NAME:
            return self.export_name(data)
        if option == p.NBD_OPT_ABORT:
            self.reply(option, p.NBD_REP_ACK)
            return False
        if option == p.NBD_OPT_LIST:
            return self.list(option, data)
        if option in (p.NBD_OPT_INFO, p.NBD_OPT_GO):
            return self.info(option, data)
        if option == p.NBD_OPT_STRUCTURED_REPLY:
            return self.structured_reply(option, data)
        if option in (p.NBD_OPT_LIST_META_CONTEXT, p.NBD_OPT_SET_META_CONTEXT):
            return self.meta_context(option, data)
        if option == p.NBD_OPT_STARTTLS:
            return self.refuse(option, p.NBD_REP_ERR_POLICY, "TLS not configured")
        return self.refuse(option, p.NBD_REP_ERR_UNSUP, "Unsupported option %d" % option)

    def export_name(self, data):
        try:
            export = self.exports.find(data.decode())
        except UnicodeDecodeError:
            export = None
        if export is None:
            raise p.ProtocolError("export not present")   # the spec: no error reply exists
        session = self.session(export)
        reply = p.EXPORT_NAME_REPLY.pack(export.size, session.flags)
        self.wire.send(reply if self.no_zeroes else reply + bytes(124))
        return session

    def session(self, export):
        contexts = self.contexts if self.meta_export == export.name else {}
        return Session(export, transmission_flags(export, self.structured), self.structured,
                       dict(contexts))

    def list(self, option, data):
        if data:
            return self.refuse(option, p.NBD_REP_ERR_INVALID, "No payload expected")
        for export in self.exports.list():
            self.reply(option, p.NBD_REP_SERVER, p.server_entry(export.name, export.description))
        self.reply(option, p.NBD_REP_ACK)

    def info(self, option, data):
        reader = p.Reader(data)
        name = reader.string32()
        requests = [reader.u16() for _ in range(reader.u16())]
        if name is None or not reader.ok or not reader.at_end:
            return self.refuse(option, p.NBD_REP_ERR_INVALID, "Invalid request")
        export = self.exports.find(name)
        if export is None:
            return self.refuse(option, p.NBD_REP_ERR_UNKNOWN, "export '%s' not present" % name)
        session = self.session(export)
        if p.NBD_INFO_NAME in requests:
            self.reply(option, p.NBD_REP_INFO, p.info_string(p.NBD_INFO_NAME, export.name))
        if p.NBD_INFO_DESCRIPTION in requests and export.description:
            self.reply(option, p.NBD_REP_INFO,
                       p.info_string(p.NBD_INFO_DESCRIPTION, export.description))
        self.reply(option, p.NBD_REP_INFO, p.info_block_size(
            BLOCK_SIZE_MINIMUM, BLOCK_SIZE_PREFERRED, p.NBD_MAX_BUFFER_SIZE))
        self.reply(option, p.NBD_REP_INFO, p.info_export(export.size, session.flags))
        self.reply(option, p.NBD_REP_ACK)
        return session if option == p.NBD_OPT_GO else None

    def structured_reply(self, option, data):
        if data:
            return self.refuse(option, p.NBD_REP_ERR_INVALID, "No payload expected")
        if self.structured:
            return self.refuse(option, p.NBD_REP_ERR_INVALID,
                               "structured reply already negotiated")
        self.structured = True
        self.reply(option, p.NBD_REP_ACK)

    def meta_context(self, option, data):
        if not self.structured:
            return self.refuse(option, p.NBD_REP_ERR_INVALID,
                               "request option '%s' when structured reply is not negotiated"
                               % ("NBD_OPT_LIST_META_CONTEXT" if option == p.NBD_OPT_LIST_META_CONTEXT
                                  else "NBD_OPT_SET_META_CONTEXT"))
        reader = p.Reader(data)
        name = reader.string32()
        count = reader.u32()
        if name is None or count > MAX_META_QUERIES:
            return self.refuse(option, p.NBD_REP_ERR_INVALID, "Invalid request")
        queries = [reader.string32() for _ in range(count)]
        if not reader.ok or not reader.at_end or None in queries:
            return self.refuse(option, p.NBD_REP_ERR_INVALID, "Invalid request")
        export = self.exports.find(name)
        if export is None:
            return self.refuse(option, p.NBD_REP_ERR_UNKNOWN, "export '%s' not present" % name)
        chosen = matching_contexts(contexts_of(export), queries,
                                   option == p.NBD_OPT_LIST_META_CONTEXT)
        if option == p.NBD_OPT_SET_META_CONTEXT:
            self.meta_export = export.name
            self.contexts = {index + 1: context for index, context in enumerate(chosen)}
            ids = list(self.contexts)
        else:
            ids = [0] * len(chosen)      # LIST: ids mean nothing (the spec says 0 is fine)
        for context_id, context in zip(ids, chosen):
            self.reply(option, p.NBD_REP_META_CONTEXT, p.meta_context_entry(context_id, context))
        self.reply(option, p.NBD_REP_ACK)


def matching_contexts(available, queries, listing):
    """The contexts the queries select, in the export's order.  LIST with no query
    (or a bare namespace like ``qemu:``, or ``qemu:dirty-bitmap:`` for every bitmap)
    lists all of them; SET with none selects none."""
    if not queries:
        return list(available) if listing else []
    chosen = []
    for context in available:
        prefixes = {context.split(":", 1)[0] + ":"}
        if context.startswith(p.CONTEXT_DIRTY_BITMAP):
            prefixes.add(p.CONTEXT_DIRTY_BITMAP)
        if any(q == context or (listing and q in prefixes) for q in queries):
            chosen.append(context)
    return chosen


def negotiate(wire, exports) -> Optional[Session]:
    return _Haggler(wire, exports).run()
