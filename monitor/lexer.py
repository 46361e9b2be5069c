"""Syntax highlighting of a monitor line, with keywords taken from the command table.

Tokens: the command (Keyword; an unknown one is an Error), the ``info``
subcommand (Keyword), flags (Name.Attribute), sizes (Number), device and node
names (Name.Variable, read live from the core), paths (String) and quoted
strings (String).  ``make_lexer(core)`` returns a pygments Lexer class for
prompt_toolkit's ``PygmentsLexer``.
"""
import re
from typing import Optional

from pygments.lexer import Lexer
from pygments.token import Error, Keyword, Name, Number, String, Text

from monitor.table_view import TableView, table_view

SIZE = re.compile(r"^\d+(\.\d+)?[bBkKmMgGtTpPeE]?$")
WORD = re.compile(r'\s+|"(?:[^"\\]|\\.)*"?|\S+')


def word_token(word: str, position: int, first: Optional[str], view: TableView, names) -> object:
    """The token of one word; ``position`` counts words from 0, ``first`` is the command."""
    if word.isspace():
        return Text
    if position == 0:
        return Keyword if word in view.commands else Error
    if position == 1 and first == "info":
        return Keyword if word in view.info else Error
    if position == 1 and first in ("help", "?"):
        return Keyword if (word in view.commands or word in view.info) else Text
    if word.startswith('"'):
        return String
    if word.startswith("-") and len(word) == 2:
        return Name.Attribute
    if SIZE.match(word):
        return Number
    if word in names():
        return Name.Variable
    if "/" in word or word.endswith((".qcow2", ".img", ".raw")):
        return String
    return Text


def make_lexer(core, view: Optional[TableView] = None):
    """A pygments Lexer class bound to ``core`` (for device names) and the table."""
    state = {"view": view}

    def current_view() -> TableView:
        if state["view"] is None:
            state["view"] = table_view()
        return state["view"]

    def names():
        return set(core.device_names()) | set(core.node_names())

    class HmpLexer(Lexer):
        name = "HMP"
        aliases = ["hmp"]

        def get_tokens_unprocessed(self, text):
            position, first = 0, None
            for match in WORD.finditer(text):
                word = match.group()
                token = word_token(word, position, first, current_view(), names)
                if not word.isspace():
                    first = word if position == 0 else first
                    position += 1
                yield match.start(), token, word

    return HmpLexer
