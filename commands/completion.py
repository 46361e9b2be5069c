"""The one completion engine: an HMP command line in, candidates out, from the command table.

The first word completes to command names and aliases (``commands.table``);
``info``'s word to the info subcommands.  For an argument, ``argument_at`` says
which spec the word fills and ``typed_arguments`` which words came before it; the
entry's ``complete`` map (or the kind's default) names a candidate source, and
the kind completes the prefix from ``CompletionContext``: device and node names,
job ids, file paths, formats, qemu-io commands, read live from the core.  The
``backing`` source (a stream's base) depends on the device already typed.

``complete_line(text, context)`` returns ``(candidate, typed prefix it replaces,
display)`` triples; the console's prompt_toolkit completer (monitor/completer.py)
only wraps them in ``Completion`` objects, so what the tests check through it is
what the console offers.  Nothing here touches the terminal.
"""
import os
from typing import Dict, List, Optional, Tuple

from images.chain import chain_of
from images.driver import FORMATS

from .args import _SPACE, ArgSpec, compile_args, looks_numeric
from .errors import CommandError
from .table import HMP_COMMANDS, command_words, find_command

QEMU_IO_COMMANDS = ("read", "write", "discard", "map", "alloc")
# qemu-io's command is one HMP string argument: more than one word needs quotes, so a
# command that takes arguments completes to an opened quote and a space.
_QEMU_IO_TAKES_ARGUMENTS = ("read", "write", "discard", "alloc")


def argument_at(args_type: str, text: str) -> Tuple[Optional[ArgSpec], str]:
    """Which argument the last (possibly empty) word of ``text`` would fill, and that word."""
    spec, prefix, _typed = _position(args_type, text)
    return spec, prefix


def typed_arguments(args_type: str, text: str) -> Dict[str, str]:
    """The words before the last one of ``text``, by the name of the argument each fills."""
    return _position(args_type, text)[2]


def _position(args_type: str, text: str):
    """(the spec the last word fills, that word, the earlier words by spec name)."""
    compiled = compile_args(args_type)
    specs = [s for s in compiled if not s.is_flag]
    flags = [s for s in compiled if s.is_flag]
    words = text.split()
    if text[-1:] in _SPACE or not words:
        words.append("")
    prefix = words[-1]
    positional = [w for w in words[:-1] if not (flags and w.startswith("-"))]
    typed = {spec.name: word for spec, word in zip(specs, positional)}
    if flags and prefix.startswith("-"):
        return flags[0], prefix, typed
    if len(positional) < len(specs):
        return specs[len(positional)], prefix, typed
    return None, prefix, typed


def taken_by_fallback(word_fallback: Dict[str, str], name: str, typed: Dict[str, str]) -> bool:
    """Whether argument ``name`` was already filled by a fallback word: in
    ``block_stream virtio0 A <Tab>`` the word ``A`` is the base, so nothing follows."""
    return any(target == name and source in typed and not looks_numeric(typed[source])
               for source, target in word_fallback.items())


def backing_candidates(core, device: Optional[str]) -> List[str]:
    """What names a base of ``device``: every image strictly below its active image,
    by node name and by the backing name its overlay stores (what ``find_base`` takes)."""
    if not device:
        return []
    try:
        chain = chain_of(core.active_image(device))
    except CommandError:
        return []
    names = []
    for overlay, image in zip(chain, chain[1:]):
        names += [name for name in (image.node_name, overlay.backing_name) if name]
    return list(dict.fromkeys(names))


def path_candidates(prefix: str) -> List[str]:
    """Entries of the directory ``prefix`` points into, directories ending in "/".

    Names are taken literally, as QEMU opens them (no "~" expansion: the command
    would refuse what it offered).  Dot files are offered only once a "." is typed.
    """
    directory, base = os.path.split(prefix)
    listed = directory or "."
    try:
        names = sorted(os.listdir(listed))
    except OSError:
        return []
    result = []
    for name in names:
        if name.startswith(".") and not base.startswith("."):
            continue
        path = os.path.join(directory, name) if directory else name
        result.append(path + "/" if os.path.isdir(os.path.join(listed, name)) else path)
    return result


def qemu_io_candidates(prefix: str) -> List[str]:
    """qemu-io commands for an unquoted or an opened-quote prefix (``w``, ``"w``)."""
    quoted = [('"%s ' % word) if word in _QEMU_IO_TAKES_ARGUMENTS else '"%s"' % word
              for word in QEMU_IO_COMMANDS]
    return quoted if prefix.startswith('"') else list(QEMU_IO_COMMANDS)


class CompletionContext:
    """``candidates(source, prefix, typed)`` for the sources named in the command table,
    read live from ``core`` (``device_names``, ``node_names``, ``job_ids``, ``active_image``)."""

    def __init__(self, core, table=HMP_COMMANDS):
        self._core = core
        self._table = table

    def candidates(self, source: str, prefix: str, typed: Optional[Dict[str, str]] = None) -> List[str]:
        result = []
        for part in source.split("+"):
            result += self._one_source(part, prefix, typed or {})
        return result

    def _one_source(self, source: str, prefix: str, typed: Dict[str, str]) -> List[str]:
        if source == "backing":          # a stream's base: only below the typed device's top
            return backing_candidates(self._core, typed.get("device"))
        if source == "files":
            return path_candidates(prefix)
        if source == "qemu-io":
            return qemu_io_candidates(prefix)
        fixed = {"formats": FORMATS, "commands": command_words(self._table),
                 "info": self._info_words()}
        if source in fixed:
            return list(fixed[source])
        live = {"devices": self._core.device_names, "nodes": self._core.node_names,
                "jobs": self._core.job_ids}
        return list(live[source]()) if source in live else []

    def _info_words(self) -> Tuple[str, ...]:
        info = find_command("info", self._table)
        return command_words(info.sub_table) if info and info.sub_table else ()


def complete_line(text: str, context: CompletionContext,
                  table=HMP_COMMANDS) -> List[Tuple[str, str, str]]:
    """(candidate, the typed prefix it replaces, what to display) for the line before the cursor."""
    line = text.lstrip()
    if not _has_space(line):
        return _matching(command_words(table), line)
    word = line.split(None, 1)[0]
    rest = line[len(word):]
    command = find_command(word, table)
    if command is None:
        return []
    if not command.sub_table:
        return _complete_args(command, rest, context)
    inner = rest.lstrip()
    if not _has_space(inner):
        return _complete_args(command, rest, context)       # the subcommand itself
    sub_word = inner.split(None, 1)[0]
    sub = find_command(sub_word, command.sub_table)
    return _complete_args(sub, inner[len(sub_word):], context) if sub else []


def _complete_args(command, text: str, context) -> List[Tuple[str, str, str]]:
    spec, prefix = argument_at(command.args_type, text)
    typed = typed_arguments(command.args_type, text)
    if spec is None or taken_by_fallback(command.word_fallback, spec.name, typed):
        return []
    if spec.is_flag:
        flags = ["-" + s.kind.flag for s in compile_args(command.args_type) if s.is_flag]
        return _matching(flags, prefix)
    source = command.complete.get(spec.name, "")
    words = spec.kind.complete(prefix, context, source, typed)
    fallback = command.word_fallback.get(spec.name)
    if fallback:
        words += spec.kind.complete(prefix, context, command.complete.get(fallback, ""), typed)
    if source == "qemu-io" and not prefix.startswith('"'):
        # Offer the command by name, insert it opened-quoted (one argument, many words).
        quoted = dict(zip(QEMU_IO_COMMANDS, qemu_io_candidates('"')))
        return [(quoted[word], prefix, word) for word in dict.fromkeys(words)]
    return [(word, prefix, word) for word in dict.fromkeys(words)]


def _matching(words, prefix: str) -> List[Tuple[str, str, str]]:
    return [(word, prefix, word) for word in words if word.startswith(prefix)]


def _has_space(text: str) -> bool:
    return any(char.isspace() for char in text)
