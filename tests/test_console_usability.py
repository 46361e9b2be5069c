"""The console as an operator uses it: narrow terminals, Ctrl-C, typos, path completion.

- In a narrow terminal (40 columns) the job toolbar and ``block_job_wait``'s bars
  wrapped every job over three lines with truncated cells ("vir…", "MiB…"): a job
  must stay on one line that fits, dropping the least useful columns first.
- The idle hint was cut mid-phrase ("... │ Ctrl-R") in a narrow terminal.
- ``block_job_wait nosuch`` (a typo) returned at once, silently and successfully,
  as if the job had ended.
"""
import io
import re

from rich.console import Console

from monitor.progress import ThroughputMeter, waiting_view
from monitor.script import ScriptSession, default_interpreter
from monitor.toolbar import IDLE_HINT, JobsToolbar
from fake_core import FakeCore

ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")
MiB = 1048576


def two_jobs():
    core = FakeCore()
    core.start_job("virtio0", 256 * MiB, speed=MiB)
    core.advance("virtio0", 80 * MiB)
    core.start_job("ide0-hd0", 256 * MiB, speed=3 * MiB)
    core.advance("ide0-hd0", 160 * MiB)
    core.pause("ide0-hd0")
    return core


def plain_lines(text):
    return ANSI_CODE.sub("", text).splitlines()


def test_narrow_toolbar_keeps_each_job_on_one_line_that_fits():
    core = two_jobs()
    lines = plain_lines(JobsToolbar(core, width=lambda: 40).text())
    assert len(lines) == 2, lines
    for line in lines:
        assert len(line.rstrip()) <= 39 and "\u2026" not in line, line
    assert re.match(r"virtio0 +\S+ +31% .*running$", lines[0].rstrip()), lines[0]
    assert re.match(r"ide0-hd0 +\S+ +62% .*paused$", lines[1].rstrip()), lines[1]


def test_wide_toolbar_still_shows_every_column():
    line = plain_lines(JobsToolbar(two_jobs(), width=lambda: 140).text())[0]
    assert re.search(r"virtio0 .* 31% 80\.0 MiB/256\.0 MiB .* ETA .* limit 1\.0 MiB/s\s+running",
                     line), line


def test_eighty_columns_keep_the_eta_with_a_shorter_bar():
    lines = plain_lines(JobsToolbar(two_jobs(), width=lambda: 80).text())
    assert len(lines) == 2 and all(len(line.rstrip()) <= 79 for line in lines), lines
    assert re.search(r"virtio0 +\S{10,} +31% 80\.0 MiB/256\.0 MiB .* ETA .*running$",
                     lines[0].rstrip()), lines[0]


def test_narrow_wait_view_keeps_each_job_on_one_line():
    buffer = io.StringIO()
    console = Console(file=buffer, width=40, force_terminal=True)
    infos = two_jobs().execute("query-block-jobs")
    console.print(waiting_view(infos, ThroughputMeter(), None, width=39))
    lines = plain_lines(buffer.getvalue())
    job_lines = [line for line in lines if re.match(r"(virtio0|ide0-hd0) ", line)]
    assert len(job_lines) == 2 and len(lines) <= 4, lines
    assert all("\u2026" not in line for line in job_lines), lines


def test_narrow_idle_hint_shows_whole_phrases_only():
    text = JobsToolbar(FakeCore(), width=lambda: 40).text()
    parts = IDLE_HINT.split(" \u2502 ")
    assert len(text) <= 39
    assert text == " \u2502 ".join(parts[:text.count("\u2502") + 1]), text
    assert JobsToolbar(FakeCore(), width=lambda: 140).text() == IDLE_HINT


def test_block_job_wait_for_an_unknown_name_is_an_error():
    core = FakeCore()
    out, err = io.StringIO(), io.StringIO()
    script = ScriptSession(core, out, err, make_interpreter=default_interpreter)
    status = script.run(["block_job_wait nosuch", "block_job_wait virtio0", "block_job_wait D"])
    assert out.getvalue() == ("(qemu) block_job_wait nosuch\n"
                              "Error: Cannot find device='nosuch' nor node-name='nosuch'\n"
                              "(qemu) block_job_wait virtio0\n"
                              "(qemu) block_job_wait D\n")
    assert status == 1


def test_ctrl_c_during_sleep_at_the_console_writes_over_the_echoed_caret_c(capsys):
    # The terminal echoes "^C" where the cursor is; "^Csleep interrupted" read badly.
    from prompt_toolkit.history import InMemoryHistory
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput
    from monitor.repl import Repl
    from fake_core import FakeInterpreter

    def interrupted(seconds):
        raise KeyboardInterrupt

    with create_pipe_input() as pipe:
        pipe.send_text("sleep 5\r\x04")
        Repl(FakeCore(), make_interpreter=FakeInterpreter, history=InMemoryHistory(), input=pipe,
             output=DummyOutput(), colour=False, sleep=interrupted, wait_stream=None).run()
    assert capsys.readouterr().out == "\rsleep interrupted\n"


def test_ctrl_c_during_sleep_in_a_script_stays_plain():
    def interrupted(seconds):
        raise KeyboardInterrupt
    out, err = io.StringIO(), io.StringIO()
    ScriptSession(FakeCore(), out, err, make_interpreter=default_interpreter,
                  sleep=interrupted).run(["sleep 5"])
    assert out.getvalue() == "(qemu) sleep 5\nsleep interrupted\n"


def test_path_completion_offers_only_names_the_command_will_open(tmp_path, monkeypatch):
    # QEMU (and snapshot_blkdev) take a file name literally: "~/x.qcow2" is refused
    # with "Could not create '~/x.qcow2'", so completing "~/" from $HOME misled.
    from commands.completion import path_candidates
    home = tmp_path / "home"
    home.mkdir()
    (home / "in-home.qcow2").write_bytes(b"")
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    (work / "disk.qcow2").write_bytes(b"")
    (work / ".hidden").write_bytes(b"")
    monkeypatch.chdir(work)
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document
    from monitor.completer import HmpCompleter

    def complete(text):
        return [c.text for c in HmpCompleter(FakeCore()).get_completions(Document(text), CompleteEvent())]
    assert path_candidates("~/") == []
    assert complete("snapshot_blkdev virtio0 ~/") == []
    # Dot files only when asked for, as shells complete them.
    assert complete("snapshot_blkdev virtio0 ") == ["disk.qcow2"]
    assert complete("snapshot_blkdev virtio0 .h") == [".hidden"]


def test_sleep_longer_than_the_platform_can_sleep_is_a_parse_error():
    # "sleep 99999999999" crashed blockmon with OverflowError from time.sleep.
    out, err = io.StringIO(), io.StringIO()
    slept = []
    status = ScriptSession(FakeCore(), out, err, make_interpreter=default_interpreter,
                           sleep=slept.append).run(["sleep 99999999999", "sleep 4000000000"])
    assert out.getvalue() == ("(qemu) sleep 99999999999\n"
                              "sleep: invalid number '99999999999'\n"
                              'Try "help sleep" for more information\n'
                              "(qemu) sleep 4000000000\n")
    assert slept == [4e9] and status == 1


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_walkthrough_draws_progress_only_on_a_terminal_stderr(tmp_path, monkeypatch):
    # With stdout a terminal and stderr redirected to a file, the bars' ANSI codes
    # went into the file: whether to draw is stderr's own question.
    import sys
    from monitor.cli import main
    out, err = _Terminal(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["--demo", str(tmp_path / "demo"), "--walkthrough"]) == 0
    assert "unchanged" in out.getvalue()
    assert err.getvalue() == ""


def test_an_unknown_command_is_drawn_in_red():
    # The lexer marks it Error, but pygments' default style gives Error only a
    # border, which a terminal does not draw: "bogus" looked like any text.
    from prompt_toolkit.styles import merge_styles, style_from_pygments_cls
    from pygments.styles import get_style_by_name
    from monitor.repl import STYLE
    style = merge_styles([style_from_pygments_cls(get_style_by_name("default")), STYLE])
    attrs = style.get_attrs_for_style_str("class:pygments.error")
    assert attrs.color in ("ansired", "ff0000", "cd0000"), attrs
