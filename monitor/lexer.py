"""Syntax highlighting of a monitor line, with keywords taken from the command table.

Tokens: the command (Keyword; an unknown one is an Error), the ``info``
subcommand (Keyword), flags (Name.Attribute), sizes (Number), device and node
names (Name.Variable, read live from the core), paths (String) and quoted
strings (String).  ``make_lexer(core)`` returns a pygments Lexer class for
prompt_toolkit's ``PygmentsLexer``.
"""
import re

from pygments.lexer import Lexer
from pygments.token import Error, Keyword, Name, Number, String, Text

from commands.table import HMP_COMMANDS, command_words, find_command

SIZE = re.compile(r"^[0-9]+(\.[0-9]+)?[bBkKmMgGtTpPeE]?$")
WORD = re.compile(r'\s+|"(?:[^"\\]|\\.)*"?|\S+')
HELP_WORDS = ("help", "?")


def word_token(word: str, position: int, first: str, table, names) -> object:
    """The token of one non-blank word; ``position`` counts words from 0, ``first`` is the command."""
    if position == 0:
        return Keyword if find_command(word, table) else Error
    command = find_command(first, table)
    if position == 1 and command is not None and command.sub_table:
        return Keyword if find_command(word, command.sub_table) else Error
    if position == 1 and first in HELP_WORDS:
        return Keyword if word in command_words(table) else Text
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


def make_lexer(core, table=HMP_COMMANDS):
    """A pygments Lexer class bound to ``core`` (for device and node names) and the table."""

    def names():
        return set(core.device_names()) | set(core.node_names())

    class HmpLexer(Lexer):
        name = "HMP"
        aliases = ["hmp"]

        def get_tokens_unprocessed(self, text):
            position, first = 0, ""
            for match in WORD.finditer(text):
                word = match.group()
                if word.isspace():
                    yield match.start(), Text, word
                    continue
                yield match.start(), word_token(word, position, first, table, names), word
                first = word if position == 0 else first
                position += 1

    return HmpLexer
