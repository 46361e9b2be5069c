"""The HMP console on a socket (monitor/hmp_server.py): banner, prompt, CRLF output, quit."""
import os
import shutil
import subprocess
import threading

import pytest

from monitor.hmp_server import banner_for, crlf
from monitor.servers import MonitorServers
from fake_core import TIMEOUT, FakeCore, FakeInterpreter
from qmp_clients import LineClient, remove_tree, short_tempdir

BANNER = b"QEMU 7.2.0 monitor - type 'help' for more information\r\n"
PROMPT = b"(qemu) "


@pytest.fixture
def hmp():
    directory = short_tempdir()
    core = FakeCore()
    quits = threading.Event()
    path = os.path.join(directory, "hmp.sock")
    servers = MonitorServers(core, [], ["unix:%s,server=on,wait=off" % path], on_quit=quits.set,
                             hmp_factory=FakeInterpreter, max_request=4096).start()
    servers.path, servers.fake, servers.quits = path, core, quits
    yield servers
    servers.stop()
    remove_tree(directory)


def connect(server):
    client = LineClient(server.path)
    assert client.read_until(PROMPT) == BANNER + PROMPT
    return client


def ask(client, line):
    client.send(line + "\n")
    return client.read_until(PROMPT)


def test_banner_then_prompt(hmp):
    connect(hmp)
    assert os.stat(hmp.path).st_mode & 0o777 == 0o600


def test_output_has_crlf_line_ends_then_the_prompt(hmp):
    client = connect(hmp)
    assert ask(client, "info block-jobs") == b"No active jobs\r\n(qemu) "
    assert ask(client, "info two") == b"line one\r\nline two\r\n(qemu) "
    assert ask(client, "nonl") == b"no newline\r\n(qemu) "
    assert ask(client, "frobnicate x") == b"unknown command: 'frobnicate x'\r\n(qemu) "


def test_silent_commands_empty_lines_and_crlf_input(hmp):
    client = connect(hmp)
    assert ask(client, "block_job_pause j1") == PROMPT
    assert ask(client, "") == PROMPT
    client.send("info block-jobs\r\n")
    assert client.read_until(PROMPT) == b"No active jobs\r\n(qemu) "


def test_pipelined_lines_are_answered_in_order(hmp):
    client = connect(hmp)
    client.send("info two\ninfo block-jobs\nnonl\n")
    assert client.read_until(PROMPT) == b"line one\r\nline two\r\n(qemu) "
    assert client.read_until(PROMPT) == b"No active jobs\r\n(qemu) "
    assert client.read_until(PROMPT) == b"no newline\r\n(qemu) "


def test_interpreter_bug_is_reported_and_serving_goes_on(hmp, capsys):
    client = connect(hmp)
    assert ask(client, "bug") == b"Error: interpreter bug\r\n(qemu) "
    assert "RuntimeError: interpreter bug" in capsys.readouterr().err
    assert ask(client, "info block-jobs") == b"No active jobs\r\n(qemu) "


def test_overlong_line_is_refused_once_and_the_console_lives(hmp):
    client = connect(hmp)
    client.send(b"x" * 20000 + b"\ninfo block-jobs\n")
    assert client.read_until(PROMPT) == b"Error: input line longer than 4096 bytes, ignored\r\n(qemu) "
    assert client.read_until(PROMPT) == b"No active jobs\r\n(qemu) "


def test_each_connection_is_independent(hmp):
    first, second = connect(hmp), connect(hmp)
    first.send("info two")                              # half a line, never finished
    assert ask(second, "info block-jobs") == b"No active jobs\r\n(qemu) "
    first.close()
    assert ask(second, "nonl") == b"no newline\r\n(qemu) "


def test_quit_closes_the_connection_and_signals_the_owner(hmp):
    client = connect(hmp)
    client.send("quit\n")
    with pytest.raises(EOFError):
        client.read_line()
    assert client.buffer == b""                          # QEMU prints nothing on quit
    assert hmp.quits.wait(TIMEOUT)
    assert hmp.fake.quit_requested.is_set()


def test_hmp_never_prints_events(hmp):
    client = connect(hmp)
    hmp.fake.events.publish("BLOCK_JOB_COMPLETED", {"device": "virtio0"})
    assert ask(client, "info block-jobs") == b"No active jobs\r\n(qemu) "


@pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat (apt-get install socat)")
def test_socat_gets_banner_prompt_and_output(hmp):
    result = subprocess.run(["socat", "-t", "2", "-", "UNIX-CONNECT:%s" % hmp.path],
                            input=b"info block-jobs\nquit\n", capture_output=True, timeout=30)
    assert result.stdout == BANNER + PROMPT + b"No active jobs\r\n" + PROMPT


def test_banner_and_crlf_helpers():
    version = {"qemu": {"major": 7, "minor": 2, "micro": 22}, "package": "x"}
    assert banner_for(version) == b"QEMU 7.2.22 monitor - type 'help' for more information\r\n"
    assert crlf("a\nb\r\nc\n") == b"a\r\nb\r\nc\r\n"
