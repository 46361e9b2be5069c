"""The console's Tab completion: prompt_toolkit's side of ``commands.completion``.

The engine (the command table, the argument kinds, the candidate sources) is
``commands.completion``; this module only turns its answers into prompt_toolkit
``Completion`` objects, so tests that call ``HmpCompleter.get_completions`` check
exactly what the console offers.
"""
from typing import Iterable

from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.document import Document

from commands.completion import CompletionContext, complete_line
from commands.table import HMP_COMMANDS


class HmpCompleter(Completer):
    """Completes the text before the cursor against ``table`` with candidates from ``core``."""

    def __init__(self, core, table=HMP_COMMANDS):
        self._table = table
        self._context = CompletionContext(core, table)

    def get_completions(self, document: Document, complete_event) -> Iterable[Completion]:
        for word, typed, display in complete_line(document.text_before_cursor, self._context,
                                                  self._table):
            yield Completion(word, start_position=-len(typed), display=display)
