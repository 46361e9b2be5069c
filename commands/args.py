"""Typed HMP argument kinds, compiled once from a command's ``args_type``.

QEMU's grammar (monitor/hmp.c ``monitor_parse_arguments``): comma-separated
``name:T`` with ``?`` for optional.  Kinds: ``B`` block device, ``s`` string
(double quotes with ``\\n \\r \\\\ \\' \\"`` escapes), ``F`` filename, ``S`` rest of
line, ``o`` size (``qemu_strtosz_MiB``), ``T`` seconds (a number with optional
ms/us/ns suffix), ``-x`` flag.  Each kind parses its word from a ``Cursor`` and
completes a prefix from a context's candidate lists.

Deliberately stricter than QEMU, each case one error line: control characters,
unbalanced quotes, text glued to a closing quote, sizes glued to text.  Flags may
be clustered (``-nv``) but must come before the positional arguments; as in QEMU,
each flag is read once, so a repeated ``-f`` is a positional word.
"""
import functools
import math
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

INT64_MAX = (1 << 63) - 1
_SPACE = " \t\n\r\v\f"
_SUFFIXES = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}


class ParseError(Exception):
    """A malformed argument; ``message`` is the one line QEMU would print."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class SizeRangeError(ValueError):
    """A well-formed size too large for 64 bits (QEMU's -ERANGE)."""


# Only ASCII digits are digits (str.isdigit and re's \\d also take '８' or '٣', as
# qemu_strtosz does not).
_DIGITS = "0123456789"


# -- sizes -----------------------------------------------------------------------------
def parse_size(text: str, default_suffix: str = "M", unit: int = 1024) -> int:
    """qemu_strtosz (util/cutils.c) on a whole word: ValueError for junk, negatives, overflow.

    A bare number takes ``default_suffix`` (MiB for HMP's ``o``); hex (``0x10``)
    takes no fraction or suffix; fractions need a scale other than bytes.
    """
    match = re.fullmatch(r"\+?([0-9]+)(.*)", text, re.S)
    if match is None:
        raise ValueError("invalid size")
    whole, rest = match.groups()
    value, fraction = int(whole), 0.0
    if int(whole) == 0 and rest[:1] in ("x", "X"):
        hex_match = re.fullmatch(r"[xX]([0-9a-fA-F]+)", rest)
        if hex_match is None:
            raise ValueError("invalid size")
        value, rest = int(hex_match.group(1), 16), ""
    elif rest.startswith("."):
        frac_match = re.match(r"\.([0-9]*)", rest)
        fraction = float("0." + (frac_match.group(1) or "0"))
        rest = rest[frac_match.end():]
        if rest[:1] in ("e", "E") and rest[1:2] != "" and rest[1:2] in _DIGITS:
            raise ValueError("invalid size")       # QEMU refuses exponents
    suffix = rest.upper() if rest else default_suffix
    if suffix not in _SUFFIXES:
        raise ValueError("invalid size")
    multiplier = unit ** _SUFFIXES[suffix]
    if multiplier == 1 and fraction:
        raise ValueError("invalid size")
    # QEMU's 64.64 fixed point: the fraction truncated to 64 bits, half rounded up.
    fixed = int(fraction * 2.0 ** 64) * multiplier
    result = value * multiplier + (fixed >> 64) + ((fixed >> 63) & 1)
    if result >= 1 << 64 or value >= 1 << 64:
        raise SizeRangeError("invalid size")
    return result


# Longer sleeps make time.sleep raise (its int64-nanosecond deadline overflows near
# 9.2e9 s); 2**32 s (136 years) is beyond any script and safely inside that.
MAX_SECONDS = 2 ** 32


def parse_seconds(text: str) -> float:
    """HMP's ``T``: a number of seconds, optionally suffixed ms, us or ns."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ms|us|ns)?", text)
    if match is None:
        raise ValueError("invalid number")
    value = float(match.group(1))
    value /= {None: 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[match.group(2)]
    if not math.isfinite(value) or value > MAX_SECONDS:
        raise ValueError("invalid number")
    return value


def looks_numeric(word: str) -> bool:
    """A word meant as a number (so a bad one is 'invalid size', not a base name).
    Any Unicode digit counts here: '８' was meant as a number, and is refused as one."""
    return word[:1] != "" and (word[0].isdigit() or word[0] in "+-")


# -- the cursor over one command line --------------------------------------------------
class Cursor:
    """A position in a command line; words are read QEMU's ``get_str`` way."""

    def __init__(self, text: str, pos: int = 0):
        self.text = text
        self.pos = pos

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _SPACE:
            self.pos += 1

    def at_end(self) -> bool:
        self.skip_space()
        return self.pos >= len(self.text)

    def peek_word(self) -> str:
        self.skip_space()
        end = self.pos
        while end < len(self.text) and self.text[end] not in _SPACE:
            end += 1
        return self.text[self.pos:end]

    def rest(self) -> str:
        self.skip_space()
        value, self.pos = self.text[self.pos:].rstrip(_SPACE), len(self.text)
        return value

    def read_word(self, command: str) -> Tuple[str, bool]:
        """The next word and whether it was quoted; ParseError on bad quoting."""
        self.skip_space()
        if self.text.startswith('"', self.pos):
            return self._read_quoted(command), True
        word = self.peek_word()
        if '"' in word:
            raise ParseError("%s: unbalanced quote in %s" % (command, word))
        self.pos += len(word)
        return word, False

    def _read_quoted(self, command: str) -> str:
        out, i, text = [], self.pos + 1, self.text
        escapes = {"n": "\n", "r": "\r", "\\": "\\", "'": "'", '"': '"'}
        while i < len(text) and text[i] != '"':
            if text[i] == "\\":
                code = text[i + 1:i + 2]
                if code not in escapes:
                    raise ParseError("%s: unsupported escape code: '\\%s'" % (command, code))
                out.append(escapes[code])
                i += 2
            else:
                out.append(text[i])
                i += 1
        if i >= len(text):
            raise ParseError("%s: unterminated string" % command)
        self.pos = i + 1
        if self.pos < len(text) and text[self.pos] not in _SPACE:
            raise ParseError("%s: unbalanced quote in %s" % (command, text[i:].split()[0]))
        return "".join(out)


# -- kinds -------------------------------------------------------------------------------
class Kind:
    """One argument kind: how to parse its word and where completions come from."""

    letter = "?"
    missing = "%s: string expected"
    source = ""                 # default completion source (see ``Context``)

    def parse(self, cursor: Cursor, command: str):
        return cursor.read_word(command)[0]

    def complete(self, prefix: str, context, source: str = "",
                 typed: Optional[Dict[str, str]] = None) -> List[str]:
        """Candidates for ``prefix``; ``typed`` holds the words already typed, by spec name."""
        source = source or self.source
        if not source or context is None:
            return []
        found = context.candidates(source, prefix, typed or {})
        return sorted(c for c in set(found) if c.startswith(prefix))


class DeviceKind(Kind):
    letter, missing, source = "B", "%s: block device name expected", "devices+nodes"


class StringKind(Kind):
    letter = "s"


class FileKind(Kind):
    letter, missing, source = "F", "%s: filename expected", "files"


class RestKind(Kind):
    letter = "S"

    def parse(self, cursor: Cursor, command: str):
        return cursor.rest()


class SizeKind(Kind):
    letter, missing = "o", "invalid size"

    def parse(self, cursor: Cursor, command: str):
        word, quoted = cursor.read_word(command)
        try:
            value = None if quoted else parse_size(word)
        except ValueError:
            value = None
        if value is None or value > INT64_MAX:
            raise ParseError("invalid size")
        return value


class SecondsKind(Kind):
    letter, missing = "T", "%s: number expected"

    def parse(self, cursor: Cursor, command: str):
        word, _quoted = cursor.read_word(command)
        try:
            return parse_seconds(word)
        except ValueError:
            raise ParseError("%s: invalid number '%s'" % (command, word)) from None


class FlagKind(Kind):
    letter = "-"

    def __init__(self, flag: str):
        self.flag = flag


_KINDS = {cls.letter: cls for cls in (DeviceKind, StringKind, FileKind, RestKind,
                                       SizeKind, SecondsKind)}


@dataclass(frozen=True)
class ArgSpec:
    name: str
    kind: Kind
    optional: bool

    @property
    def is_flag(self) -> bool:
        return isinstance(self.kind, FlagKind)


@functools.lru_cache(maxsize=None)
def compile_args(args_type: str) -> Tuple[ArgSpec, ...]:
    """``"device:B,speed:o?"`` -> ArgSpecs; ValueError on a grammar we do not know."""
    specs = []
    for entry in filter(None, args_type.split(",")):
        name, _, type_ = entry.partition(":")
        if type_.startswith("-") and len(type_) == 2:
            specs.append(ArgSpec(name, FlagKind(type_[1]), True))
            continue
        optional = type_.endswith("?")
        letter = type_[:-1] if optional else type_
        if letter not in _KINDS:
            raise ValueError("unknown argument type %r in %r" % (type_, args_type))
        specs.append(ArgSpec(name, _KINDS[letter](), optional))
    return tuple(specs)


# -- parsing -----------------------------------------------------------------------------
def parse_arguments(command: str, args_type: str, text: str,
                    word_fallback: Optional[Dict[str, str]] = None) -> Dict[str, object]:
    """The argument dict for ``text`` (the line after the command name), or ParseError.

    ``command`` is the name used in messages.  ``word_fallback`` maps an optional
    size argument to a string argument that takes a non-numeric word instead.
    """
    specs, cursor, values = compile_args(args_type), Cursor(text), {}
    fallback = word_fallback or {}
    for index, spec in enumerate(specs):
        if spec.is_flag:
            if index == 0 or not specs[index - 1].is_flag:
                _parse_flags(cursor, specs, index, values, command)
            continue
        if spec.name in values:
            continue                        # already filled by a fallback word
        if cursor.at_end():
            if spec.optional:
                continue
            message = spec.kind.missing
            raise ParseError(message % command if "%s" in message else message)
        word = cursor.peek_word()
        if spec.name in fallback and (word.startswith('"') or not looks_numeric(word)):
            values[fallback[spec.name]] = cursor.read_word(command)[0]
            continue
        values[spec.name] = spec.kind.parse(cursor, command)
    if not cursor.at_end():
        raise ParseError("%s: extraneous characters at the end of line" % command)
    return values


def _parse_flags(cursor: Cursor, specs, start: int, values: dict, command: str) -> None:
    """Consume ``-x`` words (clusters allowed) for the run of flag specs at ``start``.

    As QEMU's monitor_parse_arguments, each flag spec looks at one word: at most
    as many words as there are flags are read as flags, each flag once.  A word
    past that (``block_job_cancel -f -f``) is left for the positional arguments.
    """
    flags = {}
    for spec in specs[start:]:
        if not spec.is_flag:
            break
        flags[spec.kind.flag] = spec.name
    for _turn in range(len(flags)):
        word = cursor.peek_word()
        if not word.startswith("-") or word == "-":
            break
        if any(flags.get(letter) in values for letter in word[1:]):
            break       # a flag seen in an earlier word: QEMU reads this word as an argument
        for letter in word[1:]:
            if letter not in flags or flags[letter] in values:
                raise ParseError("%s: unsupported option -%s" % (command, letter))
            values[flags[letter]] = True
        cursor.pos += len(word)
