"""HMP adapters: the exact QMP calls each command makes and the exact text it prints."""
import copy

import pytest

from commands.errors import CommandError
from commands.hmp import HmpInterpreter, HmpResult
from commands.hmp_info import allocation_strip, format_blockmap, size_to_str
from images.errors import JobError
from fake_core import QUERY_BLOCK_D, FakeCore


def run(line, core=None, **kw):
    core = core or FakeCore()
    return HmpInterpreter(core, **kw).run_line(line), core


# -- QMP calls -------------------------------------------------------------------------
@pytest.mark.parametrize("line, call", [
    ("block_stream virtio0", ("block-stream", {"job-id": "virtio0", "device": "virtio0",
                                               "on-error": "report"})),
    ("block_stream virtio0 10M", ("block-stream", {"job-id": "virtio0", "device": "virtio0",
                                                   "on-error": "report", "speed": 10485760})),
    ("block_stream virtio0 0 B.qcow2", ("block-stream", {
        "job-id": "virtio0", "device": "virtio0", "on-error": "report", "speed": 0,
        "base": "B.qcow2"})),
    ("block_stream virtio0 A", ("block-stream", {"job-id": "virtio0", "device": "virtio0",
                                                 "on-error": "report", "base": "A"})),
    ("block_stream ide0-hd0", ("block-stream", {"job-id": "ide0-hd0", "device": "ide0-hd0",
                                                "on-error": "report"})),
    ("block_job_set_speed virtio0 1k", ("block-job-set-speed", {"device": "virtio0", "speed": 1024})),
    ("block_job_cancel virtio0", ("block-job-cancel", {"device": "virtio0", "force": False})),
    ("block_job_cancel -f virtio0", ("block-job-cancel", {"device": "virtio0", "force": True})),
    ("block_job_pause virtio0", ("block-job-pause", {"device": "virtio0"})),
    ("block_job_resume virtio0", ("block-job-resume", {"device": "virtio0"})),
    ("block_job_complete virtio0", ("block-job-complete", {"device": "virtio0"})),
    ("snapshot_blkdev ide0-hd0 /new-path/disk.img qcow2", ("blockdev-snapshot-sync", {
        "device": "ide0-hd0", "snapshot-file": "/new-path/disk.img", "format": "qcow2",
        "mode": "absolute-paths"})),
    ("snapshot_blkdev virtio0 /images/s1/new2.qcow2", ("blockdev-snapshot-sync", {
        "device": "virtio0", "snapshot-file": "/images/s1/new2.qcow2", "mode": "absolute-paths"})),
    ("snapshot_blkdev -n virtio0 /m.qcow2 qcow2", ("blockdev-snapshot-sync", {
        "device": "virtio0", "snapshot-file": "/m.qcow2", "format": "qcow2", "mode": "existing"})),
    ('qemu-io virtio0 "write -P 0xab 0 64k"', ("x-blockmon-qemu-io", {
        "device": "virtio0", "command": "write -P 0xab 0 64k"})),
    ("quit", ("quit", {})),
    ("q", ("quit", {})),
])
def test_qmp_call_and_silence(line, call):
    core = FakeCore()
    core.start_job("virtio0", 100)       # the job verbs need a job, as in the real core
    result, core = run(line, core)
    assert core.calls == [call]
    assert result.output == "" and result.ok


def test_quit_sets_quit():
    assert run("quit")[0] == HmpResult("", True, True)
    assert run("q")[0].quit and not run("info version")[0].quit


def test_qemu_io_prints_what_the_core_returns():
    core = FakeCore()
    core.responses["x-blockmon-qemu-io"] = "wrote 65536/65536 bytes at offset 0\n"
    assert run('qemu-io virtio0 "write 0 64k"', core)[0].output == \
        "wrote 65536/65536 bytes at offset 0\n"


# -- errors ------------------------------------------------------------------------------
def test_snapshot_without_file_is_refused_before_the_core():
    result, core = run("snapshot_blkdev virtio0")
    assert result == HmpResult("Error: Parameter 'snapshot-file' is missing\n", False)
    assert core.calls == []


@pytest.mark.parametrize("error, text", [
    (JobError("Block job 'virtio0' not found", not_found=True), "Error: Block job 'virtio0' not found\n"),
    (CommandError("Cannot find device='nosuch' nor node-name='nosuch'"),
     "Error: Cannot find device='nosuch' nor node-name='nosuch'\n"),
    (CommandError("Job is already paused"), "Error: Job is already paused\n"),
])
def test_command_errors(error, text):
    core = FakeCore()
    for name in ("block-job-cancel", "block-stream", "block-job-pause"):
        core.responses[name] = error
    for line in ("block_job_cancel virtio0", "block_stream nosuch", "block_job_pause virtio0"):
        assert run(line, core)[0] == HmpResult(text, False)


def test_other_exceptions_propagate():
    core = FakeCore()
    core.responses["block-stream"] = RuntimeError("bug")
    with pytest.raises(RuntimeError):
        run("block_stream virtio0", core)


# Every parse error of the transcript, verbatim; none reaches the core.
@pytest.mark.parametrize("line, text", [
    ("block_job_set_speed virtio0 -1", "invalid size\nTry \"help block_job_set_speed\" for more information\n"),
    ("block_job_set_speed virtio0", "invalid size\nTry \"help block_job_set_speed\" for more information\n"),
    ("block_job_set_speed virtio0 abc", "invalid size\nTry \"help block_job_set_speed\" for more information\n"),
    ("block_stream", "block_stream: block device name expected\nTry \"help block_stream\" for more information\n"),
    ("block_stream virtio0 -1", "invalid size\nTry \"help block_stream\" for more information\n"),
])
def test_transcript_parse_errors(line, text):
    result, core = run(line)
    assert result == HmpResult(text, False) and core.calls == []


def test_unknown_commands():
    assert run("foo")[0] == HmpResult("unknown command: 'foo'\n", False)
    assert run("info foo")[0] == HmpResult("unknown command: 'info foo'\n", False)
    assert run("info   foo bar")[0].output == "unknown command: 'info   foo'\n"


def test_info_parse_error_names_the_subcommand():
    assert run("info block-jobs now")[0].output == (
        "block-jobs: extraneous characters at the end of line\n"
        "Try \"help info block-jobs\" for more information\n")


def test_blank_lines_do_nothing():
    assert run("")[0] == HmpResult("", True)
    assert run("   \t ")[0] == HmpResult("", True)


# -- help (every help text of the transcript) ----------------------------------------------
TRANSCRIPT_HELP = {
    "block_stream": "block_stream device [speed [base]] -- copy data from a backing file into a block device\n",
    "block_job_set_speed": "block_job_set_speed device speed -- set maximum speed for a background block operation\n",
    "block_job_cancel": "block_job_cancel [-f] device -- stop an active background block operation (use -f\n"
                        "\t\t\t if you want to abort the operation immediately\n"
                        "\t\t\t instead of keep running until data is in sync)\n",
    "block_job_pause": "block_job_pause device -- pause an active background block operation\n",
    "block_job_resume": "block_job_resume device -- resume a paused background block operation\n",
    "block_job_complete": "block_job_complete device -- stop an active background block operation\n",
    "snapshot_blkdev": "snapshot_blkdev [-n] device [new-image-file] [format] -- initiates a live snapshot\n"
                       "\t\t\tof device. If a new image file is specified, the\n"
                       "\t\t\tnew image file will become the new root image.\n"
                       "\t\t\tIf format is specified, the snapshot file will\n"
                       "\t\t\tbe created in that format.\n"
                       "\t\t\tThe default format is qcow2.  The -n flag requests QEMU\n"
                       "\t\t\tto reuse the image found in new-image-file, instead of\n"
                       "\t\t\trecreating it from scratch.\n",
}


@pytest.mark.parametrize("name", sorted(TRANSCRIPT_HELP))
def test_transcript_help(name):
    result, core = run("help " + name)
    assert result == HmpResult(TRANSCRIPT_HELP[name], True) and core.calls == []


def test_help_forms():
    assert run("help quit")[0].output == "quit|q  -- quit the emulator\n"
    assert run("? q")[0].output == "quit|q  -- quit the emulator\n"
    assert run("help info block-jobs")[0].output == \
        "info block-jobs  -- show progress of ongoing block device operations\n"
    assert run("help foo")[0].output == "unknown command: 'foo'\n"
    assert run("help info foo")[0].output == "unknown command: 'info foo'\n"
    everything = run("help")[0].output
    assert everything.startswith("help|? [cmd] -- show the help\nquit|q  -- quit the emulator\n")
    assert "info [subcommand] -- show various information about the system state\n" in everything
    assert "sleep seconds -- pause the script for a number of seconds (blockmon)\n" in everything


def test_info_alone_and_help_info_list_the_subcommands():
    listing = run("info")[0].output
    assert listing == run("help info")[0].output
    assert listing.splitlines() == [
        "info version  -- show the version of QEMU",
        "info block [-n] [-v] [device] -- show info of one block device or all block devices (-n: show named nodes; -v: show details)",
        "info block-jobs  -- show progress of ongoing block device operations",
        "info blockmap [device] -- show which image of the backing chain holds each part of the "
        "disk, shaded by how much of it (blockmon)",
        "info merge-cost device [base] -- show the bytes a stream and a commit onto base "
        "(default: the bottom of the chain) would each copy (blockmon)",
        "info dirty-bitmaps [device] -- show the dirty bitmaps of each node of one block device "
        "or all block devices (blockmon)",
        "info blockstats  -- show block device statistics",
        "info block-exports  -- show the NBD server, its exports and their clients (blockmon)",
    ]


# -- info ----------------------------------------------------------------------------------
def test_info_version():
    result, core = run("info version")
    assert result.output == "7.2.0 (blockmon 0.1.0)\n" and core.calls == [("query-version", {})]


def test_info_block_jobs():
    assert run("info block-jobs")[0].output == "No active jobs\n"
    core = FakeCore()
    core.responses["query-block-jobs"] = [
        {"type": "stream", "device": "virtio0", "len": 2147483648, "offset": 8912896,
         "speed": 10485760, "busy": True, "paused": False, "io-status": "ok", "ready": False,
         "status": "running", "auto-finalize": True, "auto-dismiss": True},
        {"type": "mirror", "device": "j2", "len": 10, "offset": 5, "speed": 0}]
    assert run("info block-jobs", core)[0].output == (
        "Streaming device virtio0: Completed 8912896 of 2147483648 bytes, speed limit 10485760 bytes/s\n"
        "Type mirror, device j2: Completed 5 of 10 bytes, speed limit 0 bytes/s\n")


def two_devices():
    second = copy.deepcopy(QUERY_BLOCK_D[0])
    second["device"] = "ide0-hd0"
    second["inserted"].update({"file": "/d/disk.img", "node-name": "disk", "ro": True,
                               "backing_file_depth": 0})
    del second["inserted"]["backing_file"]
    return FakeCore(query_block=QUERY_BLOCK_D + [second])


def test_info_block_layout():
    text = run("info block", two_devices())[0].output
    assert text == (
        "virtio0 (#block195): /images/s1/D.qcow2 (qcow2)\n"
        "    Cache mode:       writeback\n"
        "    Backing file:     /images/s1/C.qcow2 (chain depth: 3)\n"
        "\n"
        "ide0-hd0 (disk): /d/disk.img (qcow2, read-only)\n"
        "    Cache mode:       writeback\n")
    assert run("info block ide0-hd0", two_devices())[0].output.startswith("ide0-hd0 (disk)")
    assert run("info block nosuch", two_devices())[0] == HmpResult("", True)


def test_info_block_verbose_dumps_the_chain():
    core = FakeCore(query_block=copy.deepcopy(QUERY_BLOCK_D))
    image = core.responses["query-block"][0]["inserted"]["image"]
    image.update({"cluster-size": 65536, "backing-filename": "C.qcow2",
                  "full-backing-filename": "/images/s1/C.qcow2",
                  "backing-filename-format": "qcow2",
                  "format-specific": {"type": "qcow2", "data": {
                      "compat": "1.1", "compression-type": "zlib", "lazy-refcounts": False,
                      "refcount-bits": 16, "corrupt": False, "extended-l2": False}},
                  "backing-image": {"filename": "/images/s1/C.qcow2", "format": "qcow2",
                                    "virtual-size": 2147483648, "actual-size": 200704}})
    text = run("info block -v virtio0", core)[0].output
    assert text.split("\nImages:\n")[1] == (
        "image: /images/s1/D.qcow2\n"
        "file format: qcow2\n"
        "virtual size: 2 GiB (2147483648 bytes)\n"
        "disk size: 1.29 GiB\n"
        "cluster_size: 65536\n"
        "backing file: C.qcow2 (actual path: /images/s1/C.qcow2)\n"
        "backing file format: qcow2\n"
        "Format specific information:\n"
        "    compat: 1.1\n"
        "    compression type: zlib\n"
        "    lazy refcounts: false\n"
        "    refcount bits: 16\n"
        "    corrupt: false\n"
        "    extended l2: false\n"
        "image: /images/s1/C.qcow2\n"
        "file format: qcow2\n"
        "virtual size: 2 GiB (2147483648 bytes)\n"
        "disk size: 196 KiB\n")


@pytest.mark.parametrize("value, text", [
    (0, "0 B"), (1, "1 B"), (1000, "0.977 KiB"), (200704, "196 KiB"), (290455552, "277 MiB"),
    (1382838272, "1.29 GiB"), (2147483648, "2 GiB"), (1023, "0.999 KiB"), (999, "999 B"),
])
def test_size_to_str(value, text):
    assert size_to_str(value) == text


# -- info blockmap and its strip ---------------------------------------------------------
@pytest.mark.parametrize("runs, size, width, strip", [
    ([], 64, 8, "........"),
    ([["data", 0, 64]], 64, 8, "████████"),
    ([["data", 0, 8], ["zero", 8, 8], ["unallocated", 16, 48]], 64, 8, "█0......"),
    ([["data", 0, 4], ["unallocated", 4, 60]], 64, 8, "▇......."),
    ([["zero", 60, 4]], 64, 8, ".......▇"),
    ([["data", 0, 8], ["zero", 8, 56]], 64, 8, "█0000000"),
    ([["data", 3, 1]], 4, 64, "...█"),
    ([], 0, 64, ""),
    # the halving scale: 1/2, 1/4, ... 1/64 of a 1024-byte cell, then less
    ([["data", 1024 * i, 1024 >> (i + 1)] for i in range(8)], 8192, 8, "▇▆▅▄▃▂▁▁"),
    ([["data", 0, 1], ["zero", 1, 3]], 4, 1, "█"),       # all held, zeros included
    ([["data", 0, 1], ["zero", 1, 1]], 4, 1, "▇"),       # half held
])
def test_allocation_strip(runs, size, width, strip):
    assert allocation_strip(runs, size, width) == strip


def test_info_blockmap():
    layers = [
        {"node-name": "D", "filename": "/c/D.qcow2", "virtual-size": 64,
         "runs": [["data", 0, 8], ["unallocated", 8, 56]]},
        {"node-name": "A", "filename": "/c/A.qcow2", "virtual-size": 64,
         "runs": [["zero", 0, 32], ["data", 32, 32]]},
    ]
    assert format_blockmap("virtio0", layers, width=8) == (
        "virtio0: [A] <- [D]\n"
        "  D |█.......| /c/D.qcow2\n"
        "  A |0000████| /c/A.qcow2\n")
    core = FakeCore(query_block=QUERY_BLOCK_D)
    core.responses["x-blockmon-block-map"] = layers
    result, core = run("info blockmap", core)
    assert core.calls == [("query-block", {}), ("x-blockmon-block-map", {"device": "virtio0"})]
    assert result.output.startswith("virtio0: [A] <- [D]\n  D |█")
    assert result.output.endswith("'0' zero clusters only  '.' none (read from below)\n")


# -- console-bound commands ------------------------------------------------------------------
def test_block_job_wait_and_sleep_defaults_and_overrides(monkeypatch):
    slept = []
    monkeypatch.setattr("commands.hmp.time.sleep", slept.append)
    result, core = run("block_job_wait virtio0")
    assert result == HmpResult("", True) and core.waited == ["virtio0"] and core.calls == []
    assert run("sleep 0.25")[0] == HmpResult("", True) and slept == [0.25]
    seen = []
    hooked = {"block_job_wait": lambda args: seen.append(args) or "done\n"}
    assert run("block_job_wait", handlers=hooked)[0] == HmpResult("done\n", True)
    assert seen == [{}]


def test_wait_for_missing_job_is_an_error():
    class Core(FakeCore):
        def wait_jobs(self, job_id=None, timeout=None):
            raise JobError("Block job '%s' not found" % job_id, not_found=True)
    assert run("block_job_wait x", Core())[0] == HmpResult("Error: Block job 'x' not found\n", False)
