"""Scripted sessions: transcripts, event lines, the wait at end of input, exit statuses.

The first part drives ScriptSession with a fake core (tests/fake_core.py);
the second runs ``python -m monitor`` with a stdin pipe against the real core.
"""
import io
import json
import os
import subprocess
import sys

import pytest

from monitor.script import ScriptSession
from fake_core import FakeCore, FakeInterpreter
from tests.conftest import connect_when_listening

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def session(core, echo=True):
    out, err = io.StringIO(), io.StringIO()
    return ScriptSession(core, out, err, echo=echo, make_interpreter=FakeInterpreter,
                         sleep=lambda seconds: None), out, err


def test_transcript_echoes_each_command_and_skips_blanks_and_comments():
    script, out, err = session(FakeCore())
    status = script.run(["# a comment\n", "\n", "echo hello\n", "   \n", "  # indented comment\n",
                         "echo bye\n"])
    assert out.getvalue() == "(qemu) echo hello\nhello\n(qemu) echo bye\nbye\n"
    assert (status, err.getvalue()) == (0, "")


def test_quiet_turns_the_echo_off():
    script, out, _ = session(FakeCore(), echo=False)
    assert script.run(["echo hello"]) == 0
    assert out.getvalue() == "hello\n"


def test_a_failed_command_gives_status_1_and_the_rest_still_runs():
    script, out, _ = session(FakeCore())
    assert script.run(["fail", "echo after"]) == 1
    assert out.getvalue() == "(qemu) fail\nError: it failed\n(qemu) echo after\nafter\n"


def test_events_are_qmp_json_lines_and_end_of_input_waits_for_jobs():
    core = FakeCore()
    # The job finishes only once the session waits for it at end of input.
    core.on_wait = lambda job_id: core.jobs and core.finish("virtio0")
    script, out, _ = session(core)
    assert script.run(["stream virtio0 1048576"]) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "(qemu) stream virtio0 1048576"
    assert json.loads(lines[1]) == {
        "event": "BLOCK_JOB_COMPLETED",
        "data": {"type": "stream", "device": "virtio0", "len": 1048576, "offset": 1048576, "speed": 0},
        "timestamp": {"seconds": 1700000000, "microseconds": 250000}}
    assert lines[1].startswith('{"event": "BLOCK_JOB_COMPLETED", "data": {"type": "stream"')
    assert len(lines) == 2 and core.jobs == {}


def test_a_job_that_completes_with_an_error_gives_status_1():
    core = FakeCore()
    core.on_wait = lambda job_id: core.jobs and core.finish("virtio0", error="Input/output error")
    script, out, _ = session(core)
    assert script.run(["stream virtio0 4096"]) == 1
    assert '"error": "Input/output error"' in out.getvalue()


def test_a_job_left_paused_at_the_end_is_cancelled_and_fails():
    core = FakeCore()
    script, out, err = session(core)
    core.start_job("virtio0", 4096)
    core.pause("virtio0")
    assert script.run(["echo x"]) == 1
    assert err.getvalue() == ("blockmon: not waiting: virtio0 paused (block_job_resume to go on)\n"
                              "blockmon: cancelled running job virtio0; images are valid and their "
                              "backing files unchanged\n")
    assert '"event": "BLOCK_JOB_CANCELLED"' in out.getvalue()


def test_quit_stops_reading_cancels_running_jobs_and_says_which():
    core = FakeCore()
    script, out, err = session(core)
    assert script.run(["stream virtio0 4096", "quit", "echo never"]) == 0
    assert "echo never" not in out.getvalue()
    assert "cancelled running job virtio0" in err.getvalue()
    assert core.jobs == {}


def test_block_job_wait_blocks_until_that_job_ends():
    core = FakeCore()
    waited = []
    core.on_wait = lambda job_id: (waited.append(job_id), core.jobs and core.finish("virtio0"))
    script, out, _ = session(core)
    assert script.run(["stream virtio0 8192", "block_job_wait virtio0", "echo done"]) == 0
    lines = out.getvalue().splitlines()
    assert lines[0:2] == ["(qemu) stream virtio0 8192", "(qemu) block_job_wait virtio0"]
    assert json.loads(lines[2])["event"] == "BLOCK_JOB_COMPLETED"
    assert lines[3:] == ["(qemu) echo done", "done"]
    assert waited[0] == "virtio0"


# -- against the real core ---------------------------------------------------------

def blockmon(args, stdin_text, timeout=120):
    return subprocess.run([sys.executable, "-m", "monitor"] + args, input=stdin_text, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def demo_dir(tmp_path):
    from monitor.demo import build_demo
    return build_demo(str(tmp_path / "demo")).directory


def test_real_script_transcript_and_exit_status(demo_dir):
    d = os.path.join(demo_dir, "D.qcow2")
    result = blockmon([d], "info block-jobs\n# comment\n\nblock_job_cancel virtio0\n")
    assert result.stdout == ("(qemu) info block-jobs\nNo active jobs\n"
                             "(qemu) block_job_cancel virtio0\nError: Block job 'virtio0' not found\n")
    assert result.returncode == 1


def test_real_script_waits_for_the_stream_at_end_of_input(demo_dir):
    d = os.path.join(demo_dir, "D.qcow2")
    result = blockmon(["-q", d], "block_stream virtio0 0 A\n")
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout + result.stderr
    event = json.loads(lines[0])
    assert event["event"] == "BLOCK_JOB_COMPLETED"
    assert event["data"]["device"] == "virtio0" and event["data"]["offset"] == event["data"]["len"]
    assert result.returncode == 0
    again = blockmon([d], "info block\n")
    assert "Backing file:     %s" % os.path.join(demo_dir, "A.qcow2") in again.stdout or \
        "Backing file:     A.qcow2" in again.stdout


def test_real_bad_command_line_fails_and_changes_nothing(demo_dir):
    d = os.path.join(demo_dir, "D.qcow2")
    before = open(d, "rb").read()
    result = blockmon([d], "block_stream virtio0 A.qcow2x extra words\nbogus\n")
    assert result.returncode == 1
    assert "(qemu) bogus\nunknown command: 'bogus'\n" in result.stdout
    assert open(d, "rb").read() == before


def test_the_real_interpreter_calls_the_console_handlers():
    from monitor.script import default_interpreter
    core = FakeCore()
    core.start_job("virtio0", 100)
    core.on_wait = lambda job_id: core.jobs and core.finish("virtio0")
    slept = []
    out, err = io.StringIO(), io.StringIO()
    script = ScriptSession(core, out, err, make_interpreter=default_interpreter, sleep=slept.append)
    status = script.run(["info block-jobs", "block_job_wait virtio0", "sleep 1.5", "info block-jobs",
                         "frobnicate"])
    lines = out.getvalue().splitlines()
    assert lines[0:2] == ["(qemu) info block-jobs",
                          "Streaming device virtio0: Completed 0 of 100 bytes, speed limit 0 bytes/s"]
    assert lines[2] == "(qemu) block_job_wait virtio0"
    assert json.loads(lines[3])["event"] == "BLOCK_JOB_COMPLETED"
    assert lines[4:] == ["(qemu) sleep 1.5", "(qemu) info block-jobs", "No active jobs",
                         "(qemu) frobnicate", "unknown command: 'frobnicate'"]
    assert slept == [1.5] and status == 1


def test_with_a_qmp_server_the_session_keeps_serving_until_quit(demo_dir, tmp_path):
    import time
    sock_path = str(tmp_path / "qmp.sock")
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "-qmp", "unix:%s,server=on,wait=off" % sock_path,
                             os.path.join(demo_dir, "D.qcow2")], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("info block-jobs\n")
        proc.stdin.close()
        deadline = time.monotonic() + 30
        while not os.path.exists(sock_path):
            assert time.monotonic() < deadline, "the QMP socket never appeared"
            time.sleep(0.05)
        client = connect_when_listening(sock_path, deadline)
        reader = client.makefile("r")
        assert "QMP" in json.loads(reader.readline())
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)          # input has ended, but it is still serving
        for command in ("qmp_capabilities", "quit"):
            client.sendall(json.dumps({"execute": command}).encode() + b"\n")
            assert json.loads(reader.readline()) == {"return": {}}
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read() == "(qemu) info block-jobs\nNo active jobs\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
