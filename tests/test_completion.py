"""Completion from the command table: commands, info subcommands, devices, jobs, files, flags."""
import os

import pytest

from commands.completion import CompletionContext, complete_line


class Core:
    CHAINS = {"virtio0": ["D", "C", "B", "A"], "ide0-hd0": ["disk"]}

    def active_image(self, name):
        from test_repl_fakes import fake_chain
        return fake_chain(self.CHAINS, name)

    def device_names(self):
        return ["virtio0", "ide0-hd0"]

    def node_names(self):
        return ["A", "B", "C", "D", "disk"]

    def job_ids(self):
        return ["virtio0"]


CTX = CompletionContext(Core())


@pytest.mark.parametrize("line, prefix, expected", [
    ("", "", None),
    ("block_j", "block_j", ["block_job_cancel", "block_job_complete", "block_job_pause",
                            "block_job_resume", "block_job_set_speed", "block_job_wait"]),
    ("inf", "inf", ["info"]),
    ("info ", "", ["block", "block-exports", "block-jobs", "blockmap", "blockstats", "version"]),
    ("info bl", "bl", ["block", "block-exports", "block-jobs", "blockmap", "blockstats"]),
    ("info block ", "", ["ide0-hd0", "virtio0"]),
    ("info blockmap ", "", ["A", "B", "C", "D", "disk", "ide0-hd0", "virtio0"]),
    ("block_stream v", "v", ["virtio0"]),
    ("block_stream virtio0 ", "", ["A", "A.qcow2", "B", "B.qcow2", "C", "C.qcow2"]),
    ("block_stream virtio0 1", "1", []),
    ("block_stream virtio0 0 ", "", ["A", "A.qcow2", "B", "B.qcow2", "C", "C.qcow2"]),
    ("block_stream C 0 ", "", ["A", "A.qcow2", "B", "B.qcow2"]),
    ("block_stream ide0-hd0 0 ", "", []),
    ("block_job_pause ", "", ["virtio0"]),
    ("block_job_cancel -", "-", ["-f"]),
    ("block_job_cancel -f v", "v", ["virtio0"]),
    ("snapshot_blkdev ide0-hd0 /new.qcow2 q", "q", ["qcow2"]),
    ("help block_st", "block_st", ["block_stream"]),
    ("quit ", "", []),
    ("nosuch ", "", []),
    ("qemu-io virtio0 w", "w", ["write"]),
])
def test_complete_line(line, prefix, expected):
    got_prefix, got = complete_line(line, CTX)
    assert got_prefix == prefix
    if expected is not None:
        assert got == expected
    else:
        assert "block_stream" in got and "q" in got


def test_file_completion(tmp_path):
    (tmp_path / "disk.qcow2").write_bytes(b"")
    (tmp_path / "dir").mkdir()
    prefix = str(tmp_path) + os.sep
    _p, got = complete_line("snapshot_blkdev virtio0 " + prefix, CTX)
    assert got == [prefix + "dir/", prefix + "disk.qcow2"]
