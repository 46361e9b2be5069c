"""Input QEMU refuses is refused: non-ASCII digits, lone surrogates, NUL in strings, unknown jobs.

Every check goes through the CLI (``python -m monitor``) or a real QMP socket, and
every refusal leaves the images byte for byte as they were.
"""
import subprocess
import sys

import pytest

from blockmon_process import Blockmon, small_chain
from tests.conftest import ROOT
from tests.oracle import fingerprints

FULLWIDTH_8 = "\uff18"


def run_script(lines, *images):
    return subprocess.run([sys.executable, "-m", "monitor", "-q", *images], cwd=ROOT,
                          input="".join(line + "\n" for line in lines), capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def chain(tmp_path, qemu_img):
    top = small_chain(str(tmp_path))
    return top, [top, str(tmp_path / "base.qcow2")]


@pytest.mark.parametrize("line, error", [
    ("block_stream virtio0 " + FULLWIDTH_8, "invalid size\nTry \"help block_stream\" for more information\n"),
    ("block_stream virtio0 1" + FULLWIDTH_8, "invalid size\nTry \"help block_stream\" for more information\n"),
    ("sleep " + FULLWIDTH_8,
     "sleep: invalid number '%s'\nTry \"help sleep\" for more information\n" % FULLWIDTH_8),
    ('qemu-io virtio0 "read -P %s 0 4k"' % FULLWIDTH_8,
     "%s is not a valid pattern byte\n" % FULLWIDTH_8),
    ('qemu-io virtio0 "read -P 1_0 0 4k"', "1_0 is not a valid pattern byte\n"),
    ('qemu-io virtio0 "read 0 %sk"' % FULLWIDTH_8,
     "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- %sk\n" % FULLWIDTH_8),
])
def test_numbers_take_ascii_digits_only(chain, line, error):
    top, paths = chain
    before = fingerprints(paths)
    result = run_script([line, "info block-jobs"], top)
    assert result.stdout == error + "No active jobs\n"
    assert result.returncode == 1
    assert fingerprints(paths) == before


def test_a_unicode_digit_in_a_drive_index_is_a_usage_error(chain):
    top, _ = chain
    result = subprocess.run([sys.executable, "-m", "monitor", "-drive",
                             "file=%s,if=ide,index=%s" % (top, FULLWIDTH_8), "-c", "quit"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (
        2, "blockmon: -drive file=%s,if=ide,index=%s: index expects a number, got '%s'\n"
        % (top, FULLWIDTH_8, FULLWIDTH_8))


@pytest.fixture
def served(chain):
    top, paths = chain
    process = Blockmon(["-drive", "file=%s,if=none,id=virtio0" % top])
    yield process, paths
    process.close()


def test_qmp_refusals_as_qemu_and_nothing_changes(served):
    process, paths = served
    before = fingerprints(paths)
    client = process.qmp()
    # Sent as raw bytes: json.dumps would pair or escape the surrogate differently.
    for raw, escape in ((b'{"execute": "query-version", "arguments": {"x": "\\ud800"}}', "\\ud800"),
                        (b'{"execute": "query-block", "id": "a\\uDC00"}', "\\uDC00"),
                        (b'{"execute": "query-block", "id": "\\ud800\\u0041"}', "\\ud800")):
        client.send(raw)
        assert client.read_reply() == {"error": {
            "class": "GenericError",
            "desc": "JSON parse error, %s is not a valid Unicode character" % escape}}
    client.send(b'{"execute": "query-version", "id": "\\ud83d\\ude00"}')
    assert client.read_reply()["id"] == "\U0001F600"        # a real pair still works
    assert client.cmd("job-dismiss", {"id": "nosuch"}) == {
        "error": {"class": "GenericError", "desc": "Job not found"}}
    assert client.cmd("block-job-dismiss", {"id": "nosuch"}) == {
        "error": {"class": "DeviceNotActive", "desc": "Block job 'nosuch' not found"}}
    assert fingerprints(paths) == before


@pytest.mark.parametrize("command, arguments, member", [
    ("block-stream", {"device": "virtio0", "backing-file": "base\0.qcow2"}, "backing-file"),
    ("block-stream", {"device": "virtio0", "base": "base\0.qcow2"}, "base"),
    ("block-stream", {"device": "virtio0", "job-id": "j\0"}, "job-id"),
    ("blockdev-snapshot-sync", {"device": "virtio0", "snapshot-file": "/tmp/new\0.qcow2"},
     "snapshot-file"),
    ("blockdev-snapshot-sync", {"device": "virtio0", "snapshot-file": "/tmp/x.qcow2",
                                "snapshot-node-name": "n\0"}, "snapshot-node-name"),
    ("query-block-jobs", None, None),
    ("human-monitor-command", {"command-line": "snapshot_blkdev virtio0 /tmp/a\0b"}, "command-line"),
])
def test_a_nul_in_any_qmp_string_is_refused(served, command, arguments, member):
    process, paths = served
    before = fingerprints(paths)
    client = process.qmp()
    reply = client.cmd(command, arguments)
    if member is None:
        assert reply == {"return": []}
        return
    assert reply == {"error": {"class": "GenericError",
                               "desc": "Parameter '%s' must not contain a NUL character" % member}}
    assert client.cmd("query-block-jobs") == {"return": []}
    assert fingerprints(paths) == before
