"""The real core's guest path and snapshot names: failed qemu-io commands fail, relative
snapshot names become absolute, and HMP qemu-io works during a throttled stream."""
import io
import json
import os

import pytest

from commands.core import BlockCore
from commands.errors import QemuIoFailed, qmp_error
from commands.hmp import HmpInterpreter
from conftest import run
from monitor.demo import build_demo
from monitor.script import ScriptSession

WAIT = 120
MISMATCH = "Pattern verification failed at offset 0, 65536 bytes\nread 65536/65536 bytes at offset 0\n"


@pytest.fixture
def demo(tmp_path):
    return build_demo(str(tmp_path / "demo"))


@pytest.fixture
def core(demo):
    live = BlockCore()
    for drive in demo.drives:
        live.add_drive(drive.device, drive.path)
    yield live
    live.shutdown()


# -- (a) qemu-io failures count as failures, with qemu-io's own text -------------------
def test_failed_read_pattern_prints_qemu_io_text_and_fails(core, demo):
    result = HmpInterpreter(core).run_line('qemu-io virtio0 "read -P 0x11 0 64k"')
    assert (result.output, result.ok) == (MISMATCH, False)
    # the real qemu-io says the same first line (its second line adds timing we leave out)
    oracle = run("qemu-io", "-r", "-U", "-c", "read -P 0x11 0 64k", os.path.join(demo.directory, "D.qcow2"),
                 check=False).stdout
    assert oracle.splitlines()[:2] == MISMATCH.splitlines()


def test_a_good_read_still_succeeds(core):
    result = HmpInterpreter(core).run_line('qemu-io virtio0 "read -P 0xaa 0 64k"')
    assert (result.output, result.ok) == ("read 65536/65536 bytes at offset 0\n", True)


@pytest.mark.parametrize("command, text", [
    ("read -P 0x11 0 64k", MISMATCH),
    ("frob 0 1", 'command "frob" not found\n'),
    ("read 0", "bad argument count 1 to read, expected at least 2 arguments\n"),
    ("write -P 0x5a 255M 2M", "write failed: Input/output error\n"),
])
def test_qmp_gets_a_generic_error_naming_the_failure(core, command, text):
    with pytest.raises(QemuIoFailed) as err:
        core.execute("x-blockmon-qemu-io", {"device": "virtio0", "command": command})
    assert qmp_error(err.value) == {"class": "GenericError", "desc": text.rstrip("\n")}
    # through human-monitor-command the text is qemu-io's, CRLF line ends, as QEMU sends it
    line = 'qemu-io virtio0 "%s"' % command
    assert core.execute("human-monitor-command", {"command-line": line}) == text.replace("\n", "\r\n")


def test_a_script_with_a_failed_read_exits_1(core):
    out, err = io.StringIO(), io.StringIO()
    session = ScriptSession(core, out, err)
    status = session.run(['qemu-io virtio0 "read -P 0x11 0 64k"', 'qemu-io virtio0 "read -P 0xaa 0 64k"'])
    assert out.getvalue() == ('(qemu) qemu-io virtio0 "read -P 0x11 0 64k"\n' + MISMATCH +
                              '(qemu) qemu-io virtio0 "read -P 0xaa 0 64k"\n'
                              "read 65536/65536 bytes at offset 0\n")
    assert status == 1


def test_a_script_whose_reads_all_match_exits_0(core):
    out, err = io.StringIO(), io.StringIO()
    assert ScriptSession(core, out, err).run(['qemu-io virtio0 "read -P 0xaa 0 64k"']) == 0


# -- (b) a relative snapshot file name is opened by its absolute path ------------------
def test_relative_snapshot_name_shows_absolute(core, tmp_path, monkeypatch, qemu_img):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel").mkdir()
    hmp = HmpInterpreter(core)
    assert hmp.run_line("snapshot_blkdev virtio0 rel/new.qcow2").output == ""
    absolute = str(tmp_path / "rel" / "new.qcow2")
    top = core.execute("query-block")[0]["inserted"]
    assert top["file"] == absolute and top["image"]["filename"] == absolute
    assert hmp.run_line("info block virtio0").output.splitlines()[0] == "virtio0 (new): %s (qcow2)" % absolute
    monkeypatch.chdir("/")                  # the device keeps working from anywhere
    assert hmp.run_line('qemu-io virtio0 "write -P 0x77 0 64k"').ok
    core.shutdown()
    run(qemu_img, "check", absolute)
    assert run("qemu-io", "-r", "-c", "read -P 0x77 0 64k", absolute).stdout.startswith("read 65536")


def test_relative_snapshot_errors_name_the_file_as_typed(core, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = HmpInterpreter(core).run_line("snapshot_blkdev virtio0 nodir/new.qcow2")
    assert result.output == "Error: Could not create 'nodir/new.qcow2': No such file or directory\n"
    assert os.listdir(tmp_path) == ["demo"]


# -- (c) guest reads and writes through HMP qemu-io while a throttled stream runs -------
GUEST_WRITES = [(0x5a, 0, "64k"), (0x5b, 1 * 1024 * 1024, "64k"), (0x5c, 2 * 1024 * 1024 + 4096, "8k"),
                (0x5d, 100 * 1024 * 1024, "512k"), (0x5e, 255 * 1024 * 1024, "1M")]


def test_guest_io_during_a_speed_limited_stream(core, demo, qemu_img):
    hmp = HmpInterpreter(core)
    assert hmp.run_line("block_stream virtio0 1M").ok       # ~20 MiB to copy: it runs for a while
    for byte, offset, length in GUEST_WRITES:
        line = 'qemu-io virtio0 "write -P 0x%x %d %s"' % (byte, offset, length)
        assert hmp.run_line(line).output.startswith("wrote ")
        jobs = hmp.run_line("info block-jobs").output
        assert jobs.startswith("Streaming device virtio0: Completed ") and "speed limit 1048576" in jobs
    for byte, offset, length in GUEST_WRITES:
        result = hmp.run_line('qemu-io virtio0 "read -P 0x%x %d %s"' % (byte, offset, length))
        assert result.ok, result.output
    assert hmp.run_line("block_job_set_speed virtio0 0").ok
    events = []
    core.events.subscribe(events.append)
    assert core.wait_jobs(timeout=WAIT)
    assert [e["event"] for e in events if e["event"].startswith("BLOCK_JOB")] == ["BLOCK_JOB_COMPLETED"]
    for byte, offset, length in GUEST_WRITES:         # the stream overwrote none of them
        assert hmp.run_line('qemu-io virtio0 "read -P 0x%x %d %s"' % (byte, offset, length)).ok
    # B's stripe at 1M + 512k and C's at 2M + 256k were streamed around the writes
    assert hmp.run_line('qemu-io virtio0 "read -P 0xbb 1088k 448k"').ok
    assert hmp.run_line('qemu-io virtio0 "read -P 0xcc 2060k 180k"').ok
    core.shutdown()
    top = os.path.join(demo.directory, "D.qcow2")
    run(qemu_img, "check", top)
    assert "backing file" not in run(qemu_img, "info", top).stdout
    oracle = run("qemu-io", "-r", *sum((["-c", "read -P 0x%x %d %s" % w] for w in GUEST_WRITES), []), top)
    assert "Pattern verification failed" not in oracle.stdout
    assert json.dumps(oracle.stdout).count("read ") == len(GUEST_WRITES)
