"""The blockmon command line: -drive parsing and device naming (pure), and main()'s exits."""
import os
import subprocess
import sys

import pytest

from monitor import cli
from monitor.drive_options import (DriveSpec, UsageError, device_name, parse_command_line,
                                   parse_drive, split_drive_value)


def test_bare_images_are_the_next_virtio_drives():
    options = parse_command_line(["D.qcow2", "E.qcow2"])
    assert options.drives == [DriveSpec("virtio0", "D.qcow2"), DriveSpec("virtio1", "E.qcow2")]


def test_drive_options_all_keys():
    options = parse_command_line(
        ["-drive", "file=/x/D.qcow2,if=ide,index=3,format=qcow2,node-name=top,readonly=on"])
    assert options.drives == [DriveSpec("ide1-hd1", "/x/D.qcow2", "qcow2", "top", True)]


@pytest.mark.parametrize("interface,index,name", [
    ("ide", 0, "ide0-hd0"), ("ide", 1, "ide0-hd1"), ("ide", 2, "ide1-hd0"), ("virtio", 7, "virtio7")])
def test_qemu_device_names(interface, index, name):
    assert device_name(interface, index) == name


def test_explicit_indexes_are_claimed_before_free_ones():
    options = parse_command_line(["a", "-drive", "file=b,index=0", "-drive", "file=c,if=ide",
                                  "-drive", "file=d,if=ide"])
    assert [d.device for d in options.drives] == ["virtio1", "virtio0", "ide0-hd0", "ide0-hd1"]


def test_if_none_uses_its_id_and_id_names_any_drive():
    options = parse_command_line(["-drive", "file=a,if=none,id=disk", "--drive", "file=b,id=other"])
    assert [d.device for d in options.drives] == ["disk", "other"]


def test_doubled_comma_escapes_a_comma_in_a_file_name():
    assert split_drive_value("file=a,,b.qcow2,if=ide") == {"file": "a,b.qcow2", "if": "ide"}


@pytest.mark.parametrize("value,message", [
    ("if=ide", "-drive if=ide: file=PATH is required"),
    ("file=a,cache=none", "-drive file=a,cache=none: unknown key 'cache'"),
    ("file=a,if=scsi", "-drive file=a,if=scsi: unknown interface 'scsi' (virtio, ide or none)"),
    ("file=a,format=vmdk", "-drive file=a,format=vmdk: unknown format 'vmdk' (qcow2 or raw)"),
    ("file=a,if=none", "-drive file=a,if=none: if=none needs id=NAME"),
    ("file=a,index=x", "-drive file=a,index=x: index expects a number, got 'x'"),
    ("file=a,readonly=maybe", "-drive file=a,readonly=maybe: readonly expects on or off, got 'maybe'"),
    ("file=a,file=b", "-drive file=a,file=b: key 'file' given twice"),
    ("file=a,ide", "-drive file=a,ide: expected key=value, got 'ide'"),
    ("file=a,id=1x", "-drive file=a,id=1x: invalid id '1x'"),
])
def test_bad_drive_values_name_the_problem(value, message):
    with pytest.raises(UsageError) as err:
        parse_drive(value)
    assert str(err.value) == message


@pytest.mark.parametrize("argv,message", [
    (["--frobnicate"], "unknown option --frobnicate"),
    (["-drive"], "option -drive needs a value"),
    (["-c"], "option -c needs a value"),
    (["--walkthrough"], "option --walkthrough needs --demo"),
    (["--demo", "-drive", "file=a"], "--demo makes its own drives; drop -drive and IMAGE arguments"),
    (["-drive", "file=a,if=ide,index=4"], "-drive file=a: index 4 out of range for if=ide (0-3)"),
    (["-drive", "file=a,index=0", "-drive", "file=b,index=0"],
     "-drive file=b: if=virtio index=0 is already in use"),
    (["-drive", "file=a,if=none,id=virtio0", "b"], "-drive file=b: duplicate drive name 'virtio0'"),
    (["a", "b", "c", "d", "e", "-drive", "file=f,if=ide", "-drive", "file=g,if=ide",
      "-drive", "file=h,if=ide", "-drive", "file=i,if=ide", "-drive", "file=j,if=ide"],
     "-drive file=j: no free if=ide index left"),
    (["-qmp", "serial:/dev/ttyS0"],
     "-qmp chardev 'serial:/dev/ttyS0': unsupported backend 'serial' (use unix:PATH or tcp:HOST:PORT)"),
])
def test_bad_options_raise_one_line(argv, message):
    with pytest.raises(UsageError) as err:
        parse_command_line(argv)
    assert str(err.value) == message


def test_other_options():
    options = parse_command_line(["-q", "-c", "info block", "-c", "info version", "-qmp", "unix:/q",
                                  "-monitor", "tcp:127.0.0.1:4444", "--demo", "/tmp/d", "--walkthrough"])
    assert options.quiet and options.walkthrough and options.demo
    assert options.commands == ["info block", "info version"]
    # Parsed once, here: the servers get the spec objects.
    assert [spec.text for spec in options.qmp_specs] == ["unix:/q"]
    assert [(spec.kind, spec.path) for spec in options.qmp_specs] == [("unix", "/q")]
    assert [(spec.host, spec.port) for spec in options.monitor_specs] == [("127.0.0.1", 4444)]
    assert options.demo_dir == "/tmp/d"
    assert parse_command_line(["--demo"]).demo_dir is None


def test_main_bad_option_exits_2_with_one_line(capsys):
    assert cli.main(["-drive", "file=a,if=floppy"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("blockmon: -drive file=a,if=floppy: unknown interface 'floppy' "
                            "(virtio, ide or none)\n")


def test_main_version_and_help(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("blockmon 0.")
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: blockmon [options] [IMAGE...]")
    for option in ("-drive", "-c COMMAND", "-q", "-qmp", "-monitor", "--demo", "--walkthrough"):
        assert option in out


def test_a_command_line_session_loads_no_terminal_or_server_libraries():
    """`blockmon -c quit` starts fast (issue 6: <= 0.5 s) because it imports no UI or socket stack."""
    code = ("import sys\n"
            "from monitor.cli import main\n"
            "status = main(['-c', 'quit'])\n"
            "heavy = [m for m in ('rich', 'asyncio', 'prompt_toolkit', 'pygments') if m in sys.modules]\n"
            "print(status, ' '.join(heavy))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, check=True)
    assert result.stdout.split() == ["0"]


@pytest.mark.parametrize("word, read_only", [
    ("on", True), ("yes", True), ("true", True), ("y", True),
    ("off", False), ("no", False), ("false", False), ("n", False),
])
def test_readonly_takes_qemus_boolean_spellings(word, read_only):
    # QEMU's qapi_bool_parse (qapi/qapi-util.c), as qemu_opt's parse_option_bool uses it.
    options = parse_command_line(["-drive", "file=a.qcow2,readonly=" + word])
    assert options.drives[0].read_only is read_only
