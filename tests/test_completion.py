"""Completion from the command table: commands, info subcommands, devices, jobs, files, flags.

Through the console's own completer (prompt_toolkit's ``Document`` + ``CompleteEvent``),
so what is checked is what the console offers.
"""
import os

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from monitor.completer import HmpCompleter


class Core:
    CHAINS = {"virtio0": ["D", "C", "B", "A"], "ide0-hd0": ["disk"]}

    def active_image(self, name):
        from fake_core import fake_chain
        return fake_chain(self.CHAINS, name)

    def device_names(self):
        return ["virtio0", "ide0-hd0"]

    def node_names(self):
        return ["A", "B", "C", "D", "disk"]

    def job_ids(self):
        return ["virtio0"]


def complete_line(line, core=None):
    """(the typed prefix every candidate replaces, the candidates offered, sorted)."""
    completions = list(HmpCompleter(core or Core()).get_completions(Document(line), CompleteEvent()))
    prefixes = {-c.start_position for c in completions}
    assert len(prefixes) <= 1, prefixes
    words = line.split()
    typed = words[-1] if words and not line[-1:].isspace() else ""
    prefix = line[len(line) - prefixes.pop():] if prefixes else typed
    return prefix, sorted(c.display_text for c in completions)


@pytest.mark.parametrize("line, prefix, expected", [
    ("", "", None),
    ("block_j", "block_j", ["block_job_cancel", "block_job_complete", "block_job_pause",
                            "block_job_resume", "block_job_set_speed", "block_job_wait"]),
    ("inf", "inf", ["info"]),
    ("info ", "", ["block", "block-exports", "block-jobs", "blockmap", "blockstats",
                   "dirty-bitmaps", "merge-cost", "version"]),
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
    got_prefix, got = complete_line(line)
    assert got_prefix == prefix
    if expected is not None:
        assert got == expected
    else:
        assert "block_stream" in got and "q" in got


def test_file_completion(tmp_path):
    (tmp_path / "disk.qcow2").write_bytes(b"")
    (tmp_path / "dir").mkdir()
    prefix = str(tmp_path) + os.sep
    _p, got = complete_line("snapshot_blkdev virtio0 " + prefix)
    assert got == [prefix + "dir/", prefix + "disk.qcow2"]


def test_qemu_io_command_is_inserted_with_its_opening_quote():
    # One HMP string argument: "write 0 512" needs the quotes, so Tab opens them.
    completions = list(HmpCompleter(Core()).get_completions(Document("qemu-io virtio0 w"), CompleteEvent()))
    assert [(c.text, c.display_text, c.start_position) for c in completions] == [('"write ', "write", -1)]
    completions = list(HmpCompleter(Core()).get_completions(Document('qemu-io virtio0 "m'), CompleteEvent()))
    assert [(c.text, c.start_position) for c in completions] == [('"map"', -2)]


# -- block_stream's base completes from the typed device's chain only, on a real core --------
def console_completions(core, text):
    return [c.text for c in HmpCompleter(core).get_completions(Document(text), CompleteEvent())]


def test_stream_base_offers_only_images_below_the_typed_device(two_chains):
    core, tmp_path = two_chains
    below_d = ["A", "A.qcow2", "B", "B.qcow2", "C", "C.qcow2"]
    assert sorted(console_completions(core, "block_stream virtio0 0 ")) == below_d
    assert complete_line("block_stream virtio0 0 ", core) == ("", below_d)
    # The seed's form: the second word may be the base.
    assert sorted(console_completions(core, "block_stream virtio0 ")) == below_d
    assert console_completions(core, "block_stream virtio0 10M B") == ["B", "B.qcow2"]
    below_disk = ["base", str(tmp_path / "base.qcow2")]
    assert sorted(console_completions(core, "block_stream ide0-hd0 0 ")) == sorted(below_disk)
    # "A" already is the base (the seed's form): nothing more to offer.
    assert console_completions(core, "block_stream virtio0 A ") == []
    assert complete_line("block_stream virtio0 A ", core) == ("", [])
    assert sorted(console_completions(core, "block_stream virtio0 1M ")) == below_d
    # By node name: the chain below node C.
    assert sorted(console_completions(core, "block_stream C 0 ")) == ["A", "A.qcow2", "B", "B.qcow2"]


def test_stream_base_offers_nothing_for_an_unknown_or_bottom_device(two_chains):
    core, _tmp = two_chains
    assert console_completions(core, "block_stream nosuch 0 ") == []
    assert console_completions(core, "block_stream A 0 ") == []
    assert complete_line("block_stream nosuch 0 ", core) == ("", [])


def test_every_offered_base_is_accepted_by_block_stream(two_chains):
    from commands.block_stream import find_base
    core, _tmp = two_chains
    top = core.active_image("virtio0")
    for name in console_completions(core, "block_stream virtio0 0 "):
        assert find_base(top, name) is not None and find_base(top, name) is not top, name
