"""What the console reads from the one command table (commands/table.py).

The completer and the lexer need command names with aliases, ``info``
subcommands and, per command, its compiled argument specs.  This module is the
only place in monitor/ that knows how the table spells those, so the prompt
modules take a plain ``TableView`` (tests build one by hand).
"""
from dataclasses import dataclass
from typing import Dict, List, Tuple


@dataclass(frozen=True)
class ArgSpec:
    """One ``name:T?`` entry of an ``args_type`` string."""
    name: str
    kind: str            # HMP letter: B device, s string, F file, o size, S rest of line, -x flag
    optional: bool

    @property
    def is_flag(self) -> bool:
        return self.kind.startswith("-")


def parse_args_type(args_type: str) -> List[ArgSpec]:
    """``force:-f,device:B,speed:o?`` -> ArgSpecs, in order."""
    specs = []
    for item in filter(None, (part.strip() for part in args_type.split(","))):
        name, _, kind = item.partition(":")
        optional = kind.endswith("?")
        specs.append(ArgSpec(name, kind.rstrip("?"), optional or kind.startswith("-")))
    return specs


@dataclass
class TableView:
    """Command names (with aliases) -> argument specs; the same for ``info`` subcommands."""
    commands: Dict[str, List[ArgSpec]]
    info: Dict[str, List[ArgSpec]]
    primary: Dict[str, str]          # alias -> the entry's first name

    def names(self) -> List[str]:
        return sorted(self.commands)

    def info_names(self) -> List[str]:
        return sorted(self.info)

    def positional(self, command: str, info_sub: str = None) -> List[ArgSpec]:
        specs = self.info.get(info_sub, []) if info_sub is not None else self.commands.get(command, [])
        return [spec for spec in specs if not spec.is_flag]

    def flags(self, command: str, info_sub: str = None) -> List[str]:
        specs = self.info.get(info_sub, []) if info_sub is not None else self.commands.get(command, [])
        return [spec.kind for spec in specs if spec.is_flag]


def _entry_names(entry) -> Tuple[str, ...]:
    names = [entry.name.split("|")[0]]
    names += list(getattr(entry, "aliases", ()) or ())
    names += entry.name.split("|")[1:]
    return tuple(dict.fromkeys(names))


def build_view(entries, info_entries) -> TableView:
    """A TableView from table entries (objects with name, aliases, args_type)."""
    commands, info, primary = {}, {}, {}
    for entry in entries:
        specs = parse_args_type(entry.args_type)
        for name in _entry_names(entry):
            commands[name] = specs
            primary[name] = _entry_names(entry)[0]
    for entry in info_entries:
        for name in _entry_names(entry):
            info[name] = parse_args_type(entry.args_type)
    return TableView(commands, info, primary)


def table_view() -> TableView:
    """The view of commands/table.py."""
    from commands import table
    return build_view(table.COMMANDS, table.INFO_COMMANDS)
