"""The console's prompt modules and the REPL loop, driven through a pipe input.

Uses prompt_toolkit's create_pipe_input() + DummyOutput(), a fake core and a fake
interpreter (tests/fake_core.py) and a hand-built TableView.
"""
import re
import threading
import time

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from pygments.token import Error, Keyword, Name, Number, String

from commands.completion import path_candidates
from monitor.completer import HmpCompleter
from monitor.events_view import EventsView, event_line, is_failure
from monitor.history import history_path
from monitor.lexer import make_lexer
from monitor.progress import ThroughputMeter, format_bytes, job_state
from monitor.repl import Repl
from monitor.toolbar import IDLE_HINT, JobsToolbar
from fake_core import FakeCore, FakeInterpreter

MIB = 1 << 20
ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")


def complete(core, text):
    completer = HmpCompleter(core)
    return [c.text for c in completer.get_completions(Document(text), CompleteEvent())]


@pytest.mark.parametrize("text,expected", [
    ("block_s", ["block_stream"]),
    ("block_job_", ["block_job_set_speed", "block_job_cancel", "block_job_complete",
                    "block_job_pause", "block_job_resume", "block_job_wait"]),
    ("q", ["quit", "q", "qemu-io"]),
    ("info bl", ["block", "block-exports", "block-jobs", "blockmap", "blockstats"]),
    ("help snap", ["snapshot_blkdev"]),
    ("block_stream v", ["virtio0"]),
    ("block_stream ", ["A", "B", "C", "D", "disk0", "ide0-hd0", "virtio0"]),
    ("block_stream virtio0 ", ["A", "A.qcow2", "B", "B.qcow2", "C", "C.qcow2"]),
    ("block_stream virtio0 6M C", ["C", "C.qcow2"]),
    ("block_stream ide0-hd0 6M ", []),
    ("block_job_cancel -", ["-f"]),
    ("info block -", ["-n", "-v"]),
    ("info blockmap i", ["ide0-hd0"]),
    ("info nosuch ", []),
    ("nosuch ", []),
    ("snapshot_blkdev -n ide0-hd0 /nonexistent-dir-xyz/", []),
    ("snapshot_blkdev ide0-hd0 /x.img q", ["qcow2"]),
    ("block_job_set_speed virtio0 ", []),
    ("quit ", []),
])
def test_completions(text, expected):
    assert complete(FakeCore(), text) == expected


def test_job_commands_complete_job_ids():
    core = FakeCore()
    core.start_job("ide0-hd0", 100)
    assert complete(core, "block_job_cancel -f ") == ["ide0-hd0"]


def test_file_arguments_complete_paths(tmp_path):
    (tmp_path / "new-disk.qcow2").write_bytes(b"")
    (tmp_path / "other").mkdir()
    assert complete(FakeCore(), "snapshot_blkdev virtio0 %s/new" % tmp_path) == ["%s/new-disk.qcow2" % tmp_path]
    assert complete(FakeCore(), "snapshot_blkdev virtio0 %s/o" % tmp_path) == ["%s/other/" % tmp_path]
    assert path_candidates("/nonexistent-dir-xyz/a") == []


def lex(text):
    lexer = make_lexer(FakeCore())()
    return [(token, word) for _, token, word in lexer.get_tokens_unprocessed(text) if word.strip()]


def test_lexer_tokens_come_from_the_table_and_the_core():
    assert lex("block_stream virtio0 10M A") == [
        (Keyword, "block_stream"), (Name.Variable, "virtio0"), (Number, "10M"), (Name.Variable, "A")]
    assert lex("snapshot_blkdev -n ide0-hd0 /new-path/disk.img qcow2")[1:4] == [
        (Name.Attribute, "-n"), (Name.Variable, "ide0-hd0"), (String, "/new-path/disk.img")]
    assert lex("info block-jobs") == [(Keyword, "info"), (Keyword, "block-jobs")]
    assert lex("info nosuch")[1] == (Error, "nosuch")
    assert lex("frobnicate x")[0] == (Error, "frobnicate")
    assert lex('qemu-io virtio0 "read 0 4k"')[2] == (String, '"read 0 4k"')


def test_throughput_meter_uses_the_window_of_samples():
    now = [0.0]
    meter = ThroughputMeter(clock=lambda: now[0], window=3.0)
    assert meter.observe("j", 0) is None
    now[0] = 1.0
    assert meter.observe("j", 4 * 1048576) == 4 * 1048576
    now[0] = 2.0
    assert meter.observe("j", 6 * 1048576) == 3 * 1048576
    now[0] = 3.0
    assert meter.observe("j", 3) is None or meter.observe("j", 3) == 0   # offset fell: a new job


def test_format_bytes_and_state_words():
    assert [format_bytes(n) for n in (512, 65536, 1536 * 1048576)] == ["512 B", "64.0 KiB", "1.5 GiB"]
    assert job_state({"status": "running", "paused": False, "io-status": "ok"}) == "running"
    assert job_state({"status": "paused", "paused": True, "io-status": "ok"}) == "paused"
    assert job_state({"status": "paused", "paused": True, "io-status": "nospace"}) == "error: nospace"


def test_toolbar_shows_one_line_per_job_with_progress_and_limit():
    core = FakeCore()
    toolbar = JobsToolbar(core, width=lambda: 140)
    assert toolbar.text() == IDLE_HINT
    core.start_job("virtio0", 256 * 1048576, speed=4 * 1048576)
    core.advance("virtio0", 64 * 1048576)
    core.start_job("ide0-hd0", 1048576)
    core.pause("ide0-hd0")
    lines = ANSI_CODE.sub("", toolbar.text()).splitlines()
    assert len(lines) == 2
    assert re.search(r"virtio0 .* 25% 64\.0 MiB/256\.0 MiB .* limit 4\.0 MiB/s\s+running", lines[0]), lines[0]
    assert re.search(r"ide0-hd0 .* 0% 0 B/1\.0 MiB .* limit none\s+paused", lines[1]), lines[1]
    assert "\x1b[" in toolbar.text()


def test_events_view_filters_formats_and_swaps_sink():
    core = FakeCore()
    first, second = [], []
    view = EventsView(core.events, first.append)
    core.events.publish("JOB_STATUS_CHANGE", {"id": "virtio0", "status": "running"})
    core.start_job("virtio0", 10)
    core.finish("virtio0")
    assert first == ['BLOCK_JOB_COMPLETED {"type": "stream", "device": "virtio0", "len": 10, '
                     '"offset": 10, "speed": 0}']
    assert view.swap_sink(second.append) == first.append
    core.events.publish("BLOCK_JOB_ERROR", {"device": "virtio0", "operation": "read", "action": "report"})
    assert len(first) == 1 and second[0].startswith("BLOCK_JOB_ERROR")
    view.close()
    core.events.publish("BLOCK_JOB_CANCELLED", {})
    assert len(second) == 1
    coloured = event_line({"event": "BLOCK_JOB_COMPLETED", "data": {"error": "x"}}, colour=True)
    assert coloured.startswith("\x1b[1;31mBLOCK_JOB_COMPLETED\x1b[0m")
    assert is_failure({"event": "BLOCK_JOB_COMPLETED", "data": {"error": "x"}})
    assert not is_failure({"event": "BLOCK_JOB_CANCELLED", "data": {}})


def test_history_path_follows_xdg_state_home():
    assert history_path({"XDG_STATE_HOME": "/s", "HOME": "/h"}) == "/s/blockmon/history"
    assert history_path({"HOME": "/h"}) == "/h/.local/state/blockmon/history"
    assert history_path({"XDG_STATE_HOME": "relative", "HOME": "/h"}) == "/h/.local/state/blockmon/history"


def run_repl(core, keys, history=None):
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        repl = Repl(core, make_interpreter=FakeInterpreter, history=history or InMemoryHistory(),
                    input=pipe, output=DummyOutput(), colour=False, sleep=lambda s: None,
                    wait_stream=None)
        repl.run()
        return repl


def test_repl_runs_lines_and_leaves_on_ctrl_d(capsys):
    history = InMemoryHistory()
    repl = run_repl(FakeCore(), "echo one\r\recho two\r\x04", history)
    assert capsys.readouterr().out == "one\ntwo\n"
    assert repl._interpreter.lines == ["echo one", "echo two"]
    assert list(history.load_history_strings()) == ["echo two", "echo one"]


def test_repl_ctrl_c_drops_the_typed_line(capsys):
    repl = run_repl(FakeCore(), "echo lost\x03echo kept\r\x04")
    assert repl._interpreter.lines == ["echo kept"]
    assert capsys.readouterr().out == "kept\n"


def test_repl_quit_leaves_without_reading_more():
    repl = run_repl(FakeCore(), "quit\recho never\r")
    assert repl._interpreter.lines == ["quit"]


def wait_for(condition, what, limit=10.0):
    # Completion runs as a background task of the application: poll, bounded.
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for " + what)
        time.sleep(0.01)


def test_repl_tab_completes_the_command_and_device():
    core = FakeCore()
    with create_pipe_input() as pipe:
        repl = Repl(core, make_interpreter=FakeInterpreter, history=InMemoryHistory(), input=pipe,
                    output=DummyOutput(), colour=False, wait_stream=None)
        buffer = repl._session.default_buffer

        failures = []

        def type_keys():
            try:
                for keys, expected in (("block_s\t", "block_stream"), (" virt\t", "block_stream virtio0")):
                    pipe.send_text(keys)
                    wait_for(lambda: buffer.text == expected, repr(expected))
                pipe.send_text(" 6M\r")
            except BaseException as err:   # pytest.fail raises outside Exception; report it below
                failures.append(err)
            finally:
                pipe.send_text("\x03\x04")
        typist = threading.Thread(target=type_keys)
        typist.start()
        repl.run()
        typist.join()
    assert failures == [] and repl._interpreter.lines == ["block_stream virtio0 6M"]


def test_repl_ctrl_r_searches_history(capsys):
    history = InMemoryHistory()
    history.append_string("echo from-history")
    history.append_string("echo newer")
    repl = run_repl(FakeCore(), "\x12from\r\r\x04", history)
    assert repl._interpreter.lines == ["echo from-history"]


def test_repl_prints_events_above_the_prompt(capsys):
    core = FakeCore()
    core.on_wait = lambda job_id: core.jobs and core.finish("virtio0")
    run_repl(core, "stream virtio0 100\rblock_job_wait virtio0\r\x04")
    out = capsys.readouterr().out
    assert 'BLOCK_JOB_COMPLETED {"type": "stream", "device": "virtio0"' in out


def test_leaving_with_running_jobs_cancels_them_and_says_which(capsys):
    core = FakeCore()
    core.start_job("virtio0", 1000)
    run_repl(core, "\x04")
    out = capsys.readouterr().out
    assert core.jobs == {} and core.shutdown_calls == 1
    assert out.splitlines() == [
        'BLOCK_JOB_CANCELLED {"type": "stream", "device": "virtio0", "len": 1000, "offset": 0, "speed": 0}',
        "cancelled running job virtio0; images are valid and their backing files unchanged"]


# -- a paused job shows no throughput and no ETA at once --------------------------------
def test_toolbar_shows_no_rate_or_eta_as_soon_as_a_job_pauses():
    now = [0.0]
    core = FakeCore()
    toolbar = JobsToolbar(core, ThroughputMeter(clock=lambda: now[0]), width=lambda: 140)

    def line():
        return re.sub(r"\x1b\[[0-9;]*m", "", toolbar.text())
    core.start_job("virtio0", 64 * MIB)
    line()
    now[0] = 1.0
    core.advance("virtio0", 8 * MIB)
    assert re.search(r" 8\.0 MiB/s +ETA 0:00:07 ", line())
    now[0] = 1.5
    core.pause("virtio0")
    paused = line()
    assert re.search(r" -- B/s +ETA -:--:-- .*paused$", paused), paused
    now[0] = 2.0
    assert re.search(r" -- B/s +ETA -:--:-- ", line())
    # Resumed: the paused time does not drag the figure down; it restarts from new samples.
    core.jobs["virtio0"].update(paused=False, status="running")
    now[0] = 10.0
    assert re.search(r" -- B/s +ETA -:--:-- .*running$", line())
    now[0] = 11.0
    core.advance("virtio0", 4 * MIB)
    assert re.search(r" 4\.0 MiB/s +ETA 0:00:13 ", line())
