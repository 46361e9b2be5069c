"""Tab completion driven by the command table and the argument kinds.

The first word completes to command names and aliases; after ``info`` to the info
subcommands; after ``help`` to command names.  Arguments complete by their kind:
a block device (``B``) to device and node names, or to job ids for the
``block_job_*`` commands; a file (``F``, or a string named like a file) to paths;
a flag to the command's flags.  ``block_stream``'s later words complete to node
names, since the seed's ``block_stream virtio0 A`` takes a base in second place.
"""
from typing import Iterable, List, Optional

from prompt_toolkit.completion import Completer, Completion, PathCompleter
from prompt_toolkit.document import Document

from monitor.table_view import ArgSpec, TableView, table_view

FILE_ARG_NAMES = ("snapshot-file", "target", "filename", "file")
JOB_COMMAND_PREFIX = "block_job_"
HELP_COMMANDS = ("help", "?")


def split_words(text: str) -> List[str]:
    """Words before the cursor; the last is the prefix being completed ("" after a space)."""
    words = text.split()
    if not text or text[-1].isspace():
        words.append("")
    return words


class HmpCompleter(Completer):
    def __init__(self, core, view: Optional[TableView] = None):
        self._core = core
        self._view = view
        self._paths = PathCompleter(expanduser=True)

    @property
    def view(self) -> TableView:
        if self._view is None:
            self._view = table_view()
        return self._view

    def get_completions(self, document: Document, complete_event) -> Iterable[Completion]:
        words = split_words(document.text_before_cursor)
        prefix = words[-1]
        if len(words) == 1:
            return self._matching(self.view.names(), prefix)
        command = words[0]
        if command in HELP_COMMANDS and len(words) == 2:
            return self._matching(self.view.names(), prefix)
        if command == "info":
            if len(words) == 2:
                return self._matching(self.view.info_names(), prefix)
            return self._arguments(command, words[1], words[2:])
        return self._arguments(command, None, words[1:])

    def _arguments(self, command: str, info_sub: Optional[str], args: List[str]) -> Iterable[Completion]:
        prefix = args[-1]
        if prefix.startswith("-"):
            return self._matching(self.view.flags(command, info_sub), prefix)
        position = sum(1 for word in args[:-1] if not word.startswith("-"))
        positional = self.view.positional(command, info_sub)
        if command == "block_stream" and position >= 1:
            return self._matching(self._core.node_names(), prefix)
        if position >= len(positional):
            return []
        return self._for_kind(command, positional[position], prefix)

    def _for_kind(self, command: str, spec: ArgSpec, prefix: str) -> Iterable[Completion]:
        if spec.kind == "B":
            if command.startswith(JOB_COMMAND_PREFIX):
                return self._matching(self._core.job_ids(), prefix)
            names = list(dict.fromkeys(self._core.device_names() + self._core.node_names()))
            return self._matching(names, prefix)
        if spec.kind == "F" or (spec.kind == "s" and spec.name in FILE_ARG_NAMES):
            return self._path_completions(prefix)
        return []

    def _path_completions(self, prefix: str) -> Iterable[Completion]:
        # PathCompleter completes the tail after the last "/"; re-anchor its
        # completions on the whole word so the replaced span is right.
        for completion in self._paths.get_completions(Document(prefix), None):
            yield Completion(completion.text, start_position=completion.start_position,
                             display=completion.display)

    @staticmethod
    def _matching(candidates: Iterable[str], prefix: str) -> List[Completion]:
        return [Completion(name, start_position=-len(prefix)) for name in candidates
                if name.startswith(prefix)]
