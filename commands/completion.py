"""Completion of an HMP command line from the command table and the argument kinds.

``argument_at`` says which argument the word being typed fills; ``typed_arguments``
which words came before it, so that a source can depend on them (a stream's base is
looked for below the typed device: ``backing_candidates``).  ``CompletionContext``
reads the candidate lists from a core; ``complete_line`` completes a whole line.
The console's prompt_toolkit completer (monitor/completer.py) uses the same pieces.
"""
import os
from typing import Dict, List, Optional, Tuple

from images.chain import chain_of
from images.driver import FORMATS

from .args import _SPACE, ArgSpec, StringKind, compile_args, looks_numeric
from .errors import CommandError
from .table import HMP_COMMANDS, INFO_COMMANDS, command_words, find_command


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


class CompletionContext:
    """Candidate lists for the completer, read live from a core (see CORE_API.md).

    Sources: devices, nodes, devices+nodes, jobs, files, formats, commands, info,
    qemu-io, and backing (the images below the typed ``device``: a stream's base).
    Any method a test wants different can be overridden.
    """

    FORMATS = FORMATS
    QEMU_IO = ("read", "write", "discard", "map", "alloc")

    def __init__(self, core=None):
        self.core = core

    def candidates(self, source: str, prefix: str, typed: Optional[Dict[str, str]] = None) -> List[str]:
        if source == "files":
            return self.paths(prefix)
        if source == "backing":
            return backing_candidates(self.core, (typed or {}).get("device"))
        fixed = {"formats": self.FORMATS, "qemu-io": self.QEMU_IO,
                 "commands": command_words(HMP_COMMANDS), "info": command_words(INFO_COMMANDS)}
        if source in fixed:
            return list(fixed[source])
        if self.core is None:
            return []
        lists = {"devices": self.core.device_names, "nodes": self.core.node_names,
                 "jobs": self.core.job_ids}
        return [name for part in source.split("+") if part in lists for name in lists[part]()]

    @staticmethod
    def paths(prefix: str) -> List[str]:
        directory, _base = os.path.split(prefix)
        try:
            entries = os.listdir(os.path.expanduser(directory) or ".")
        except OSError:
            return []
        full = [os.path.join(directory, entry) for entry in entries]
        return [p + "/" if os.path.isdir(os.path.expanduser(p)) else p for p in full]


def complete_line(line: str, context) -> Tuple[str, List[str]]:
    """The word being typed at the end of ``line`` and its completions, from the table."""
    words = line.split()
    if len(words) <= 1 and not line[-1:].isspace():
        prefix = words[0] if words else ""
        return prefix, sorted(w for w in command_words(HMP_COMMANDS) if w.startswith(prefix))
    command = find_command(words[0])
    if command is None:
        return "", []
    rest = line.lstrip(_SPACE)[len(words[0]):]
    if command.sub_table is not None:
        if len(words) == 1 or (len(words) == 2 and not line[-1:].isspace()):
            prefix = words[1] if len(words) == 2 else ""
            return prefix, sorted(w for w in command_words(command.sub_table) if w.startswith(prefix))
        command = find_command(words[1], command.sub_table)
        if command is None:
            return "", []
        rest = rest.lstrip(_SPACE)[len(words[1]):]
    spec, prefix, typed = _position(command.args_type, rest)
    if spec is None or taken_by_fallback(command.word_fallback, spec.name, typed):
        return prefix, []
    if spec.is_flag:
        flags = ["-" + s.kind.flag for s in compile_args(command.args_type) if s.is_flag]
        return prefix, [f for f in flags if f.startswith(prefix)]
    name = command.word_fallback.get(spec.name, spec.name) if not looks_numeric(prefix) else spec.name
    source = command.complete.get(name, "")
    kind = spec.kind if name == spec.name else StringKind()
    return prefix, kind.complete(prefix, context, source, typed)
