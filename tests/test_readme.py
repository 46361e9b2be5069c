"""README.rst stays true: every command and option is documented, the test command is CI's."""
import os
import re

import pytest

from commands.table import HMP_COMMANDS, INFO_COMMANDS
from monitor.drive_options import DRIVE_KEYS, USAGE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as handle:
        return handle.read()


README = read("README.rst")


@pytest.mark.parametrize("command", HMP_COMMANDS, ids=lambda c: c.primary)
def test_every_hmp_command_is_documented_with_its_syntax(command):
    assert "``%s %s``" % (command.name, command.params) in README or \
        "``%s``" % command.name in README, command.name
    assert re.search(r"``%s\b" % re.escape(command.primary), README)
    if command.ours:
        assert re.search(r"``%s[^`]*``\s+\*\(blockmon\)\*" % re.escape(command.name), README), command.name


@pytest.mark.parametrize("command", INFO_COMMANDS, ids=lambda c: c.primary)
def test_every_info_subcommand_is_documented(command):
    heading = "``info %s%s``" % (command.name, " " + command.params if command.params else "")
    assert heading in README, heading
    if command.ours:
        assert heading + " *(blockmon)*" in README


def usage_options():
    """Every option the usage text names (-drive, -c, --demo, ...)."""
    return sorted({m.group(1) for m in re.finditer(r"^\s+(-{1,2}[a-z][a-z-]*)", USAGE, re.M)})


def test_usage_lists_the_options_we_expect():
    assert usage_options() == ["--demo", "--export", "--help", "--nbd-server", "--version",
                               "--walkthrough", "-c", "-drive", "-monitor", "-q", "-qmp"]


@pytest.mark.parametrize("option", usage_options())
def test_every_cli_option_is_documented(option):
    assert re.search(r"``%s(\s[^`]*)?``" % re.escape(option), README), option


def test_every_drive_key_is_documented():
    for key in DRIVE_KEYS:
        assert ("-drive file=PATH" if key == "file" else "[,%s=" % key) in README, key


def test_the_test_command_is_the_last_line_of_ci_run():
    ci_lines = [line for line in read(".ci/run").splitlines() if line.strip() and not line.startswith("#")]
    assert "\n    %s\n" % ci_lines[-1] in README
    assert ci_lines[-1] == "pip install -q -e '.[test]' && python -m pytest -q"


def test_the_set_up_commands_come_first():
    first = README.index("pip install -e . && blockmon --demo")
    assert first < README.index("What blockmon is")
    assert README.index("pip install -q -e '.[test]' && python -m pytest -q") < README.index("What blockmon is")


@pytest.mark.parametrize("section", ["The demo", "Starting it", "The console", "Commands",
                                     "Scripted sessions", "Where blockmon differs from QEMU 7.2",
                                     "QMP", "Benchmarks", "Layout"])
def test_sections(section):
    assert "\n%s\n%s\n" % (section, "-" * len(section)) in README


def test_recorded_transcript_is_a_real_session():
    """The recorded output holds the echo, an event line and the chain after the merge."""
    assert "    (qemu) block_stream virtio0 2M A\n" in README
    assert re.search(r'\n    \{"event": "BLOCK_JOB_COMPLETED", "data": \{"type": "stream", "device": "virtio0"',
                     README)
    assert "        Backing file:     A.qcow2 (chain depth: 1)\n" in README


def test_layout_names_every_top_level_package():
    for package in ("images/", "commands/", "monitor/", "tests/", "bench/"):
        assert "``%s``\n" % package in README
        assert os.path.isdir(os.path.join(ROOT, package))


def test_readme_is_valid_restructuredtext():
    docutils_core = pytest.importorskip("docutils.core")
    docutils_core.publish_string(README, writer_name="null",
                                 settings_overrides={"halt_level": 2, "report_level": 2})
