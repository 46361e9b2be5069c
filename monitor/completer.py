"""Tab completion driven by the command table and the argument kinds.

The first word completes to command names and aliases (``commands.table``);
``info``'s word to the info subcommands.  For an argument, ``argument_at`` (in
``commands.completion``) says which spec the word fills; the entry's ``complete`` map
(or the kind's default) names a candidate source, and the kind completes the
prefix from this module's ``CompletionContext``: device and node names, job ids,
file paths, formats, qemu-io commands, read live from the core.  The ``backing``
source (a stream's base) depends on the device already typed on the line.
"""
import os
from typing import Dict, Iterable, List, Optional

from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.document import Document

from commands.args import compile_args
from commands.completion import argument_at, backing_candidates, taken_by_fallback, typed_arguments
from commands.table import HMP_COMMANDS, command_words, find_command
from images.driver import FORMATS

QEMU_IO_COMMANDS = ('"read ', '"write ', '"discard ', '"map"', '"alloc ')


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


class CompletionContext:
    """``candidates(source, prefix)`` for the sources named in the command table."""

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
        if source == "devices":
            return self._core.device_names()
        if source == "nodes":
            return self._core.node_names()
        if source == "jobs":
            return self._core.job_ids()
        if source == "files":
            return path_candidates(prefix)
        if source == "formats":
            return list(FORMATS)
        if source == "commands":
            return list(command_words(self._table))
        if source == "info":
            info = find_command("info", self._table)
            return list(command_words(info.sub_table)) if info and info.sub_table else []
        if source == "qemu-io":
            return list(QEMU_IO_COMMANDS)
        return []


class HmpCompleter(Completer):
    def __init__(self, core, table=HMP_COMMANDS):
        self._table = table
        self._context = CompletionContext(core, table)

    def get_completions(self, document: Document, complete_event) -> Iterable[Completion]:
        prefix = document.text_before_cursor
        return [Completion(word, start_position=-len(typed)) for word, typed in self.complete(prefix)]

    def complete(self, text: str) -> List[tuple]:
        """(candidate, the typed prefix it replaces) for the line ``text`` before the cursor."""
        line = text.lstrip()
        if not _has_space(line):
            return self._matching(command_words(self._table), line)
        word = line.split(None, 1)[0]
        rest = line[len(word):]
        command = find_command(word, self._table)
        if command is None:
            return []
        if not command.sub_table:
            return self._complete_args(command, rest)
        inner = rest.lstrip()
        if not _has_space(inner):
            return self._complete_args(command, rest)       # the subcommand itself
        sub_word = inner.split(None, 1)[0]
        sub = find_command(sub_word, command.sub_table)
        return self._complete_args(sub, inner[len(sub_word):]) if sub else []

    def _complete_args(self, command, text: str) -> List[tuple]:
        spec, prefix = argument_at(command.args_type, text)
        typed = typed_arguments(command.args_type, text)
        if spec is None or taken_by_fallback(command.word_fallback, spec.name, typed):
            return []
        if spec.is_flag:
            flags = ["-" + s.kind.flag for s in _flag_specs(command)]
            return self._matching(flags, prefix)
        source = command.complete.get(spec.name, "")
        words = spec.kind.complete(prefix, self._context, source, typed)
        fallback = command.word_fallback.get(spec.name)
        if fallback:
            words += spec.kind.complete(prefix, self._context, command.complete.get(fallback, ""), typed)
        return [(word, prefix) for word in dict.fromkeys(words)]

    @staticmethod
    def _matching(words, prefix: str) -> List[tuple]:
        return [(word, prefix) for word in words if word.startswith(prefix)]


def _has_space(text: str) -> bool:
    return any(char.isspace() for char in text)


def _flag_specs(command):
    return [spec for spec in compile_args(command.args_type) if spec.is_flag]
