"""The guest path: a subset of qemu-io's commands run in-process on a BlockImage.

``run_qemu_io(image, command) -> (output, ok)``.  Commands: ``read [-qv] [-P
pattern] off len``, ``write [-qz] [-P pattern] off len``, ``discard [-q] off len``,
``map``, ``alloc off [len]`` (and qemu-io's short names r, w, d); ``-v`` dumps the
bytes read, ``-q`` prints nothing but errors.  The usage lines name only these
options (qemu-io's also name -a -b -C -c -f -n -s -l, which we do not implement).
Output lines copy qemu-io 7.2 (qemu-io-cmds.c), checked against the real tool.  One deliberate
difference: qemu-io follows each read/write/discard line with a timing line
(``64 KiB, 1 ops; 00.00 sec (38.298 MiB/sec and 612.7661 ops/sec)``); we leave it
out because it changes from run to run and would make transcripts unrepeatable
(``qemu-io -q`` drops both lines; we keep the first, which is deterministic).
"""
import re
from typing import List, Tuple

from images.driver import DATA, ZERO
from images.errors import BlockError

from .args import INT64_MAX, SizeRangeError, parse_size

REQUEST_MAX_BYTES = 2147483136          # BDRV_REQUEST_MAX_BYTES
SECTOR = 512

_USAGE = {
    "read": "read [-qv] [-P pattern] off len -- reads a number of bytes at a specified offset",
    "write": "write [-qz] [-P pattern] off len -- writes a number of bytes at a specified offset",
    "discard": "discard [-q] off len -- discards a number of bytes at a specified offset",
    "map": "map  -- prints the allocated areas of a file",
    "alloc": "alloc offset [count] -- checks if offset is allocated in the file",
}
_ARGC = {"read": (2, -1), "write": (2, -1), "discard": (2, -1), "map": (0, 0), "alloc": (1, 2)}
_FLAGS = {"read": {"P": True, "q": False, "v": False},
          "write": {"P": True, "q": False, "z": False}, "discard": {"q": False},
          "map": {}, "alloc": {}}
_ALIASES = {"r": "read", "w": "write", "d": "discard"}


class QemuIoError(Exception):
    """A refused qemu-io command; ``text`` is the exact output (with newline)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


def run_qemu_io(image, command: str) -> Tuple[str, bool]:
    """Run one qemu-io command line on ``image``; the text it prints and whether it succeeded."""
    words = command.split()
    if not words:
        return "", True
    name = _ALIASES.get(words[0], words[0])
    if name not in _USAGE:
        return 'command "%s" not found\n' % words[0], False
    low, high = _ARGC[name]
    given = len(words) - 1
    if given < low or (high != -1 and given > high):
        return _bad_count(given, words[0], low, high), False
    try:
        options, positional = _getopt(name, words[1:])
        return _COMMANDS[name](image, options, positional)
    except QemuIoError as err:
        return err.text, False


def _bad_count(given: int, name: str, low: int, high: int) -> str:
    if high == -1:
        expected = "at least %d arguments" % low
    elif low == high:
        expected = "%d arguments" % low
    else:
        expected = "between %d and %d arguments" % (low, high)
    return "bad argument count %d to %s, expected %s\n" % (given, name, expected)


def _getopt(name: str, argv: List[str]):
    """GNU getopt with permutation: options may appear anywhere, ``--`` ends them."""
    options, positional, flags, i = {}, [], _FLAGS[name], 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            positional.extend(argv[i + 1:])
            break
        if not word.startswith("-") or word == "-":
            positional.append(word)
            i += 1
            continue
        j = 1
        while j < len(word):
            letter = word[j]
            if letter not in flags:
                raise QemuIoError("%s: invalid option -- '%s'\n%s\n" % (name, letter, _USAGE[name]))
            if flags[letter]:                       # takes a value: rest of word or next word
                value = word[j + 1:] or (argv[i + 1] if i + 1 < len(argv) else None)
                if value is None:
                    raise QemuIoError("%s: option requires an argument -- '%s'\n%s\n"
                                      % (name, letter, _USAGE[name]))
                i += 0 if word[j + 1:] else 1
                options[letter] = value
                break
            options[letter] = True
            j += 1
        i += 1
    return options, positional


def cvtnum(text: str) -> int:
    """qemu-io's cvtnum: a byte count with optional K/M/G/T/P/E suffix (bare = bytes)."""
    try:
        value = parse_size(text, default_suffix="B")
    except SizeRangeError:
        value = INT64_MAX + 1
    except ValueError:
        raise QemuIoError("Parsing error: non-numeric argument, or extraneous/unrecognized "
                          "suffix -- %s\n" % text) from None
    if value > INT64_MAX:
        raise QemuIoError("Parsing error: argument too large -- %s\n" % text)
    return value


def parse_pattern(text: str) -> int:
    """strtol(text, 0): decimal, 0x hex or 0 octal, one byte."""
    try:
        if not re.fullmatch(r"[+-]?(0[xX][0-9a-fA-F]+|[0-9]+)", text):
            raise ValueError(text)      # int() would take '８', '1_0' and spaces
        if text.lower().startswith(("0x", "-0x", "+0x")):
            value = int(text, 16)
        elif len(text.lstrip("+-")) > 1 and text.lstrip("+-").startswith("0"):
            value = int(text, 8)
        else:
            value = int(text, 10)
    except ValueError:
        value = -1
    if not 0 <= value <= 255:
        raise QemuIoError("%s is not a valid pattern byte\n" % text)
    return value


def cvtstr(value: float) -> str:
    """qemu-io's cvtstr: ``64 KiB``, ``3.875 MiB``, ``0 bytes``."""
    for shift, suffix in ((60, " EiB"), (50, " PiB"), (40, " TiB"), (30, " GiB"),
                          (20, " MiB"), (10, " KiB")):
        if value >= 1 << shift:
            text = "%.3f" % (value / (1 << shift))
            break
    else:
        text, suffix = "%f" % value, " bytes"
    cut = text.find(".000")
    return text[:cut] + suffix if cut >= 0 else text + suffix


def _offset_and_length(image, words, name):
    offset, length = cvtnum(words[0]), cvtnum(words[1])
    if length > REQUEST_MAX_BYTES:
        qualifier = " without -n" if name == "write" else ""   # qemu-io's write says so
        raise QemuIoError("length cannot exceed %d%s, given %s\n"
                          % (REQUEST_MAX_BYTES, qualifier, words[1]))
    if offset + length > image.virtual_size:
        raise QemuIoError("%s failed: Input/output error\n" % name)
    return offset, length


def _read(image, options, words):
    if len(words) != 2:
        raise QemuIoError(_USAGE["read"] + "\n")
    pattern = parse_pattern(options["P"]) if "P" in options else None
    offset, length = _offset_and_length(image, words, "read")
    data = _io("read", image.read, offset, length)
    out, ok = "", True
    if pattern is not None and data != bytes([pattern]) * length:
        out, ok = "Pattern verification failed at offset %d, %d bytes\n" % (offset, length), False
    if "q" in options:
        return out, ok
    if "v" in options:
        out += hex_dump(data, offset)
    return out + "read %d/%d bytes at offset %d\n" % (length, length, offset), ok


def hex_dump(data: bytes, offset: int) -> str:
    """qemu-io's dump_buffer: 16 bytes a line, offset, hex, then letters and digits
    as themselves and every other byte as "." (C isalnum); a short last line unpadded."""
    lines = []
    for start in range(0, len(data), 16):
        row = data[start:start + 16]
        text = "".join(chr(b) if chr(b).isascii() and chr(b).isalnum() else "." for b in row)
        lines.append("%08x:  %s %s\n" % (offset + start, "".join("%02x " % b for b in row), text))
    return "".join(lines)


def _write(image, options, words):
    if len(words) != 2:
        raise QemuIoError(_USAGE["write"] + "\n")
    if "z" in options and "P" in options:
        raise QemuIoError("Only one of -z, -P, and -s can be specified at the same time\n")
    pattern = parse_pattern(options["P"]) if "P" in options else 0xcd
    offset, length = _offset_and_length(image, words, "write")
    if "z" in options:
        _io("write", image.write_zeroes, offset, length)
    else:
        _io("write", image.write, offset, bytes([pattern]) * length)
    if "q" in options:
        return "", True
    return "wrote %d/%d bytes at offset %d\n" % (length, length, offset), True


def _discard(image, options, words):
    if len(words) != 2:
        raise QemuIoError(_USAGE["discard"] + "\n")
    offset, length = _offset_and_length(image, words, "discard")
    _io("discard", image.discard, offset, length)
    if "q" in options:
        return "", True
    return "discard %d/%d bytes at offset %d\n" % (length, length, offset), True


def _io(name, method, *args):
    try:
        return method(*args)
    except BlockError as err:
        raise QemuIoError("%s failed: %s\n" % (name, err.desc)) from err


def _allocated_runs(image, offset, length):
    """(allocated?, offset, length) for this layer alone, neighbours of one answer merged."""
    merged = []
    for run in image.block_status(offset, length):
        allocated = run.kind in (DATA, ZERO)
        if merged and merged[-1][0] == allocated:
            merged[-1][2] += run.length
        else:
            merged.append([allocated, run.offset, run.length])
    return merged


def _map(image, options, words):
    lines = []
    for allocated, offset, length in _allocated_runs(image, 0, image.virtual_size):
        lines.append("%s (0x%x) bytes %s at offset %s (0x%x)\n" % (
            cvtstr(length), length, "    allocated" if allocated else "not allocated",
            cvtstr(offset), offset))
    return "".join(lines), True


def _alloc(image, options, words):
    if not 1 <= len(words) <= 2:
        raise QemuIoError(_USAGE["alloc"] + "\n")
    start = cvtnum(words[0])
    count = cvtnum(words[1]) if len(words) > 1 else SECTOR
    # qemu-io stops at the end of the image and counts only what it looked at.
    count = max(0, min(count, image.virtual_size - start))
    allocated = sum(length for is_alloc, _o, length in _allocated_runs(image, start, count)
                    if is_alloc) if count else 0
    return "%d/%d bytes allocated at offset %s\n" % (allocated, count, cvtstr(start)), True


_COMMANDS = {"read": _read, "write": _write, "discard": _discard, "map": _map, "alloc": _alloc}
