"""Lint of the one command table (issue 4, acceptance 5)."""
import os
import re

import pytest

from commands import hmp
from commands.args import compile_args
from commands.table import (ENUMS, HMP_COMMANDS, INFO_COMMANDS, QMP_COMMANDS, command_words,
                            find_command, find_qmp_command, handler_function, qmp_command_names)

QMP_SCHEMAS = {command.name: command.schema for command in QMP_COMMANDS}

ALL = [(cmd, "") for cmd in HMP_COMMANDS] + [(cmd, "info ") for cmd in INFO_COMMANDS]
IDS = [prefix + cmd.primary for cmd, prefix in ALL]


# QEMU's own params for qemu-io bracket its mandatory arguments ("[-d] [device]
# \"[command]\""); we keep QEMU's text, so only count and order are checked there.
BRACKET_QUIRKS = {"qemu-io"}
# QEMU's drive_backup and drive_mirror helps end with "\n\t\t\t" (help shows a tabs-only
# last line); kept.
TRAILING_TAB_QUIRKS = {"drive_backup", "drive_mirror"}


@pytest.mark.parametrize("cmd, prefix", ALL, ids=IDS)
def test_entry_has_help_and_compiles(cmd, prefix):
    help_text = cmd.help[:-4] if cmd.primary in TRAILING_TAB_QUIRKS else cmd.help
    assert help_text.strip() and help_text == help_text.strip()
    compile_args(cmd.args_type)
    assert cmd.ours == cmd.help.endswith("(blockmon)")


@pytest.mark.parametrize("cmd, prefix", ALL, ids=IDS)
def test_params_match_args_type(cmd, prefix):
    """Every argument appears in params in order, optional ones bracketed, flags as [-x];
    QEMU's ``device|all`` is one argument with two spellings."""
    specs = compile_args(cmd.args_type)
    params = cmd.params.replace('"', "")
    if params.startswith(cmd.primary + " ") or params == cmd.primary:
        params = params[len(cmd.primary):]    # QEMU's nbd_server_* params repeat the name
    tokens = re.findall(r"\[-\w\]|[\w:-]+(?:\|[\w-]+)*|\[|\]", params)
    flags = [t for t in tokens if t.startswith("[-")]
    assert flags == ["[-%s]" % s.kind.flag for s in specs if s.is_flag]
    positional = [s for s in specs if not s.is_flag]
    words = [t for t in tokens if t not in ("[", "]") and not t.startswith("[-")]
    assert len(words) == len(positional), (cmd.params, cmd.args_type)
    depth, position = 0, 0
    for token in tokens:
        if token == "[":
            depth += 1
        elif token == "]":
            depth -= 1
        elif not token.startswith("[-"):
            # QEMU writes some names differently (new-image-file for snapshot-file);
            # what must agree is the optional bracketing.
            if cmd.primary not in BRACKET_QUIRKS:
                assert (depth > 0) == positional[position].optional, (cmd.name, token)
            position += 1
    assert depth == 0


def test_flags_come_first():
    for cmd, _prefix in ALL:
        kinds = [s.is_flag for s in compile_args(cmd.args_type)]
        assert kinds == sorted(kinds, reverse=True), cmd.name


def test_no_name_or_alias_repeats():
    for table in (HMP_COMMANDS, INFO_COMMANDS):
        words = command_words(table)
        assert len(words) == len(set(words))
    assert find_command("?").primary == "help" and find_command("q").primary == "quit"


def test_every_qmp_twin_exists_and_every_entry_has_an_adapter():
    adapters, info_adapters = hmp.adapter_names()
    for cmd, prefix in ALL:
        if cmd.qmp is not None:
            assert cmd.qmp in QMP_SCHEMAS, cmd.name
        if prefix:
            assert cmd.primary in info_adapters
        else:
            assert cmd.primary in adapters or cmd.primary in ("block_job_wait", "sleep")


def test_schemas_use_known_types():
    for name, schema in QMP_SCHEMAS.items():
        for key, type_ in schema.items():
            assert re.fullmatch(r"\*?[a-z][a-z0-9-]*", key), (name, key)
            inner = type_[0] if isinstance(type_, list) else type_
            assert inner in ("str", "int", "bool", "object", "any") or inner in ENUMS, (name, key)


def test_query_commands_lists_the_schemas_and_core_api_commands():
    names = set(qmp_command_names())
    assert {"query-version", "query-commands", "query-block", "query-block-jobs", "block-stream",
            "block-job-set-speed", "block-job-cancel", "block-job-pause", "block-job-resume",
            "block-job-complete", "block-job-finalize", "block-job-dismiss",
            "blockdev-snapshot-sync", "human-monitor-command", "x-blockmon-qemu-io",
            "x-blockmon-block-map", "quit"} <= names


def test_completion_sources_name_real_arguments():
    for cmd, _prefix in ALL:
        names = {s.name for s in compile_args(cmd.args_type)}
        assert set(cmd.complete) <= names, cmd.name
        for size_arg, string_arg in cmd.word_fallback.items():
            assert {size_arg, string_arg} <= names


def test_core_handles_exactly_the_tables_qmp_commands():
    from commands.core import BlockCore
    from commands.table import qmp_command_names
    core = BlockCore()
    assert core.handled_command_names() == sorted(qmp_command_names())
    assert [entry["name"] for entry in core.execute("query-commands")] == sorted(qmp_command_names())


def test_one_qmp_entry_per_command_with_a_resolvable_handler():
    names = [command.name for command in QMP_COMMANDS]
    assert len(names) == len(set(names))
    for command in QMP_COMMANDS:
        assert find_qmp_command(command.name) is command
        assert callable(handler_function(command)), command.name
    assert find_qmp_command("nosuch") is None


def test_the_table_imports_no_handler_code():
    # Declarative: reading the table (help, completion, the lexer) runs no handler module.
    import subprocess
    import sys
    code = ("import sys, commands.table\n"
            "print(sorted(m for m in sys.modules if m.startswith('commands.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout
    assert out.strip() == "['commands.table']"
