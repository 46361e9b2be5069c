"""A corpus of malformed command lines: each gets one error line and reaches nothing.

"One error line" is the message; a parse error is followed by QEMU's hint line
``Try "help <cmd>" for more information``.  No line may call the core.  (The lead
adds the check that every image file's sha256 is unchanged, with real images.)
"""
import pytest

from commands.hmp import HmpInterpreter
from fake_core import QUERY_BLOCK_D, FakeCore


def hint(cmd):
    return 'Try "help %s" for more information\n' % cmd


CORPUS = [
    # unknown commands and subcommands
    ("bogus", "unknown command: 'bogus'\n"),
    ("block-stream virtio0", "unknown command: 'block-stream'\n"),
    ("BLOCK_STREAM virtio0", "unknown command: 'BLOCK_STREAM'\n"),
    ("info nosuch", "unknown command: 'info nosuch'\n"),
    ("info blocks", "unknown command: 'info blocks'\n"),
    ("\"block_stream\" virtio0", "unknown command: '\"block_stream\"'\n"),
    # missing arguments
    ("block_stream", "block_stream: block device name expected\n" + hint("block_stream")),
    ("block_job_cancel", "block_job_cancel: block device name expected\n" + hint("block_job_cancel")),
    ("block_job_cancel -f", "block_job_cancel: block device name expected\n" + hint("block_job_cancel")),
    ("block_job_pause", "block_job_pause: block device name expected\n" + hint("block_job_pause")),
    ("block_job_resume", "block_job_resume: block device name expected\n" + hint("block_job_resume")),
    ("block_job_complete", "block_job_complete: block device name expected\n" + hint("block_job_complete")),
    ("block_job_set_speed", "block_job_set_speed: block device name expected\n" + hint("block_job_set_speed")),
    ("block_job_set_speed virtio0", "invalid size\n" + hint("block_job_set_speed")),
    ("snapshot_blkdev", "snapshot_blkdev: block device name expected\n" + hint("snapshot_blkdev")),
    ("snapshot_blkdev -n", "snapshot_blkdev: block device name expected\n" + hint("snapshot_blkdev")),
    ("qemu-io", "qemu-io: block device name expected\n" + hint("qemu-io")),
    ("qemu-io virtio0", "qemu-io: string expected\n" + hint("qemu-io")),
    ("sleep", "sleep: number expected\n" + hint("sleep")),
    # extra arguments
    ("block_stream virtio0 0 B.qcow2 extra", "block_stream: extraneous characters at the end of line\n" + hint("block_stream")),
    ("block_stream virtio0 A 10M", "block_stream: extraneous characters at the end of line\n" + hint("block_stream")),
    ("block_job_pause virtio0 now", "block_job_pause: extraneous characters at the end of line\n" + hint("block_job_pause")),
    ("block_job_set_speed virtio0 1M 2M", "block_job_set_speed: extraneous characters at the end of line\n" + hint("block_job_set_speed")),
    ("block_job_cancel virtio0 -f", "block_job_cancel: extraneous characters at the end of line\n" + hint("block_job_cancel")),
    ("snapshot_blkdev virtio0 a.qcow2 qcow2 more", "snapshot_blkdev: extraneous characters at the end of line\n" + hint("snapshot_blkdev")),
    ("quit now", "quit: extraneous characters at the end of line\n" + hint("quit")),
    ("q now", "q: extraneous characters at the end of line\n" + hint("q")),
    ("info version 2", "version: extraneous characters at the end of line\n" + hint("info version")),
    ("info block virtio0 virtio1", "block: extraneous characters at the end of line\n" + hint("info block")),
    ("qemu-io virtio0 read 0 512", "qemu-io: extraneous characters at the end of line\n" + hint("qemu-io")),
    ("block_job_wait virtio0 virtio1", "block_job_wait: extraneous characters at the end of line\n" + hint("block_job_wait")),
    ("sleep 1 2", "sleep: extraneous characters at the end of line\n" + hint("sleep")),
    # ill-typed arguments and huge numbers
    ("block_stream virtio0 -1", "invalid size\n" + hint("block_stream")),
    ("block_stream virtio0 10Q", "invalid size\n" + hint("block_stream")),
    ("block_stream virtio0 1.5B", "invalid size\n" + hint("block_stream")),
    ("block_stream virtio0 1e9", "invalid size\n" + hint("block_stream")),
    ("block_stream virtio0 8E", "invalid size\n" + hint("block_stream")),
    ("block_stream virtio0 99999999999999999999999", "invalid size\n" + hint("block_stream")),
    ("block_job_set_speed virtio0 abc", "invalid size\n" + hint("block_job_set_speed")),
    ("block_job_set_speed virtio0 0x", "invalid size\n" + hint("block_job_set_speed")),
    ("block_job_set_speed virtio0 0x1.8", "invalid size\n" + hint("block_job_set_speed")),
    ("block_job_set_speed virtio0 18446744073709551616B", "invalid size\n" + hint("block_job_set_speed")),
    ("block_job_set_speed virtio0 \"10M\"", "invalid size\n" + hint("block_job_set_speed")),
    ("sleep forever", "sleep: invalid number 'forever'\n" + hint("sleep")),
    ("sleep -1", "sleep: invalid number '-1'\n" + hint("sleep")),
    ("sleep 1e999", "sleep: invalid number '1e999'\n" + hint("sleep")),
    # unknown flags
    ("block_job_cancel -x virtio0", "block_job_cancel: unsupported option -x\n" + hint("block_job_cancel")),
    ("block_job_cancel -F virtio0", "block_job_cancel: unsupported option -F\n" + hint("block_job_cancel")),
    ("block_job_cancel --force virtio0", "block_job_cancel: unsupported option --\n" + hint("block_job_cancel")),
    ("snapshot_blkdev -f virtio0 x.qcow2", "snapshot_blkdev: unsupported option -f\n" + hint("snapshot_blkdev")),
    ("info block -x", "block: unsupported option -x\n" + hint("info block")),
    ("qemu-io -x virtio0 map", "qemu-io: unsupported option -x\n" + hint("qemu-io")),
    # quoting
    ("qemu-io virtio0 \"read 0 512", "qemu-io: unterminated string\n" + hint("qemu-io")),
    ("qemu-io virtio0 \"", "qemu-io: unterminated string\n" + hint("qemu-io")),
    ("qemu-io virtio0 read\"", "qemu-io: unbalanced quote in read\"\n" + hint("qemu-io")),
    ("qemu-io virtio0 \"map\"\"x\"", "qemu-io: unbalanced quote in \"\"x\"\n" + hint("qemu-io")),
    ("qemu-io virtio0 \"a\\zb\"", "qemu-io: unsupported escape code: '\\z'\n" + hint("qemu-io")),
    ("block_stream \"virtio0", "block_stream: unterminated string\n" + hint("block_stream")),
    ("block_stream vir\"tio0", "block_stream: unbalanced quote in vir\"tio0\n" + hint("block_stream")),
    ("snapshot_blkdev virtio0 \"/tmp/x.qcow2", "snapshot_blkdev: unterminated string\n" + hint("snapshot_blkdev")),
    # control characters (tab is a space; a trailing newline is the line's end)
    ("block_stream virtio0\x00", "invalid control character 0x00 in command line\n"),
    ("block_stream vir\x1btio0", "invalid control character 0x1b in command line\n"),
    ("info block\x07", "invalid control character 0x07 in command line\n"),
    ("block_stream virtio0\x7f", "invalid control character 0x7f in command line\n"),
    ("info block\ninfo block-jobs", "invalid control character 0x0a in command line\n"),
    ("block_stream\rvirtio0", "invalid control character 0x0d in command line\n"),
    ("\x03", "invalid control character 0x03 in command line\n"),
    # a command that parses but is refused before the core
    ("snapshot_blkdev virtio0", "Error: Parameter 'snapshot-file' is missing\n"),
]


@pytest.mark.parametrize("line, text", CORPUS, ids=[repr(line)[:40] for line, _t in CORPUS])
def test_malformed_line(line, text):
    core = FakeCore(query_block=QUERY_BLOCK_D)
    result = HmpInterpreter(core).run_line(line)
    assert result.output == text
    assert not result.ok and not result.quit
    assert core.calls == [] and core.waited == []
    lines = result.output.splitlines()
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith('Try "help '))


def test_corpus_has_no_duplicates():
    lines = [line for line, _text in CORPUS]
    assert len(lines) == len(set(lines))


@pytest.mark.parametrize("line", ["info block\n", "info block\r\n", "\tinfo\tblock  ", "  info block"])
def test_line_ends_and_tabs_are_fine(line):
    core = FakeCore(query_block=QUERY_BLOCK_D)
    result = HmpInterpreter(core).run_line(line)
    assert result.ok and result.output.startswith("virtio0 (#block195): ")


# -- each flag is read once, as QEMU's monitor_parse_arguments does ---------------------
def test_repeated_flag_is_a_positional_word():
    from commands.core import BlockCore
    core = BlockCore()
    hmp = HmpInterpreter(core)
    result = hmp.run_line("block_job_cancel -f -f virtio0")
    assert result.output == ("block_job_cancel: extraneous characters at the end of line\n"
                             'Try "help block_job_cancel" for more information\n')
    assert not result.ok
    result = hmp.run_line("block_job_cancel -f -f")
    assert result.output == "Error: Block job '-f' not found\n" and not result.ok
    result = hmp.run_line("info block -v -v")
    assert result.output == "" and result.ok      # device "-v": QEMU lists no such device
    result = hmp.run_line("snapshot_blkdev -nn virtio0 x.qcow2")
    assert result.output == ("snapshot_blkdev: unsupported option -n\n"
                             'Try "help snapshot_blkdev" for more information\n')
