"""Splitting a QMP byte stream into JSON texts, as QEMU's json-streamer does.

QMP is not line-framed: qemu.qmp sends objects with no newline, socat users
send one object over several lines.  Like QEMU (qobject/json-streamer.c), a
message ends when its braces and brackets balance; a top-level scalar ends at
whitespace.  Unlike QEMU, a message is capped at ``limit`` bytes (QEMU: 64 MiB).
Past it, or past MAX_NESTING, the splitter reports QEMU's error (``JSON token size
limit exceeded``) once and, as QEMU's streamer resets and goes on with the next
bytes, goes on at once; but it keeps following the oversized message's strings
and brackets without storing them, so the message's tail is skipped as a whole
and the next message, even sent back to back without a newline as qemu.qmp does,
is parsed whole.  Nothing beyond ``limit`` bytes is ever buffered.
"""
import json
import re

MAX_NESTING = 1024          # QEMU's MAX_NESTING in json-streamer.c

_STRUCTURAL = re.compile(rb'[{}\[\]"]')
_IN_STRING = re.compile(rb'["\\]')
_SCALAR_END = re.compile(rb'[\s{}\[\]"]')
# One escape of a string: a \uXXXX, or a backslash and the character it escapes (so
# that an escaped backslash is consumed whole and never starts an escape of its own).
_ESCAPE = re.compile(rb'\\(u[0-9a-fA-F]{4}|.)', re.DOTALL)


class JsonParseError:
    """A stream position that is not valid JSON; ``desc`` is QEMU's error text."""

    def __init__(self, desc: str):
        self.desc = desc

    def __repr__(self):
        return "JsonParseError(%r)" % self.desc

    def __eq__(self, other):
        return isinstance(other, JsonParseError) and other.desc == self.desc


def parse_message(raw: bytes):
    """The JSON value of one complete message, or a JsonParseError."""
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        return JsonParseError("JSON nesting depth limit exceeded")
    except json.JSONDecodeError as err:
        return JsonParseError("JSON parse error, " + err.msg[:1].lower() + err.msg[1:])
    except (ValueError, UnicodeDecodeError) as err:
        return JsonParseError("JSON parse error, %s" % err)
    bad = _lone_surrogate(raw) if b"\\u" in raw else None
    if bad is not None:
        return JsonParseError("JSON parse error, %s is not a valid Unicode character" % bad)
    return value


def _lone_surrogate(raw: bytes):
    """The first \\uXXXX escape that is half a surrogate pair without its other half, as
    typed; QEMU's parse_string refuses it (Python would pass a lone surrogate on)."""
    escapes = list(_ESCAPE.finditer(raw))
    skip = False
    for index, match in enumerate(escapes):
        if skip:
            skip = False
            continue
        body = match.group(1)
        if len(body) != 5:
            continue
        code = int(body[1:], 16)
        if 0xDC00 <= code <= 0xDFFF:
            return match.group().decode("ascii")
        if 0xD800 <= code <= 0xDBFF:
            follower = escapes[index + 1] if index + 1 < len(escapes) else None
            if (follower is None or follower.start() != match.end() or len(follower.group(1)) != 5
                    or not 0xDC00 <= int(follower.group(1)[1:], 16) <= 0xDFFF):
                return match.group().decode("ascii")
            skip = True
    return None


def _reject_constant(name):
    # Python accepts NaN and Infinity; JSON (and QEMU) do not.
    raise ValueError("invalid keyword '%s'" % name)


class JsonSplitter:
    """Incremental splitter: ``feed(bytes)`` returns complete messages (bytes) and JsonParseErrors."""

    def __init__(self, limit: int = 1 << 20):
        self.limit = limit
        self._reset()

    def _reset(self):
        self._buf = bytearray()
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._scalar = False
        self._discarding = False    # in an oversized message: follow it, keep nothing

    @property
    def buffered(self) -> int:
        """Bytes held for the message in progress (never more than ``limit``)."""
        return len(self._buf)

    def _keep(self, chunk: bytes):
        if not self._discarding:
            self._buf += chunk

    def _search(self, pattern, data: bytes, pos: int, end: int):
        """The first match of ``pattern`` in data[pos:end]; None once the whole span is kept."""
        match = pattern.search(data, pos, end)
        if match is None:
            self._keep(data[pos:end])
        return match

    def feed(self, data: bytes) -> list:
        out = []
        pos = 0
        while pos < len(data):
            # Never consume past limit+1 buffered bytes, so that an oversized
            # message is noticed with at most that much held.
            end = min(len(data), pos + self.limit + 1 - len(self._buf))
            pos = self._advance(data, pos, end, out)
            if not self._discarding and (len(self._buf) > self.limit or self._depth > MAX_NESTING):
                too_deep = self._depth > MAX_NESTING
                out.append(JsonParseError("JSON nesting depth limit exceeded" if too_deep
                                          else "JSON token size limit exceeded"))
                self._buf = bytearray()
                self._discarding = True
        return out

    def _advance(self, data: bytes, pos: int, end: int, out: list) -> int:
        """Consume data[pos:end] up to one state change; return the new position."""
        if self._escape:
            self._keep(data[pos:pos + 1])
            self._escape = False
            return pos + 1
        if self._in_string:
            return self._advance_in_string(data, pos, end, out)
        if self._scalar:
            match = self._search(_SCALAR_END, data, pos, end)
            if match is None:
                return end
            self._keep(data[pos:match.start()])
            self._emit(out)
            return match.start()
        if self._depth == 0:
            return self._start_message(data, pos, out)
        return self._advance_structure(data, pos, end, out)

    def _advance_in_string(self, data: bytes, pos: int, end: int, out: list) -> int:
        match = self._search(_IN_STRING, data, pos, end)
        if match is None:
            return end
        self._keep(data[pos:match.end()])
        if match.group() == b"\\":
            self._escape = True
        else:
            self._in_string = False
            if self._depth == 0:
                self._emit(out)
        return match.end()

    def _advance_structure(self, data: bytes, pos: int, end: int, out: list) -> int:
        """Inside an object or array: up to the next quote, bracket or brace."""
        match = self._search(_STRUCTURAL, data, pos, end)
        if match is None:
            return end
        self._keep(data[pos:match.end()])
        char = match.group()
        if char == b'"':
            self._in_string = True
        elif char in (b"{", b"["):
            self._depth += 1
        else:
            self._depth -= 1
            if self._depth == 0:
                self._emit(out)
        return match.end()

    def _start_message(self, data: bytes, pos: int, out: list) -> int:
        char = data[pos:pos + 1]
        if char in (b" ", b"\t", b"\r", b"\n"):
            return pos + 1
        self._keep(char)
        if char in (b"{", b"["):
            self._depth = 1
        elif char == b'"':
            self._in_string = True
        elif char in (b"}", b"]"):
            self._emit(out)         # a stray closer: the parser reports it
        else:
            self._scalar = True
        return pos + 1

    def _emit(self, out: list):
        if not self._discarding:
            out.append(bytes(self._buf))
        self._reset()
