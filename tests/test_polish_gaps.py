"""Known gaps closed after the audits: base completion, qemu-io -v, repeated flags,
the paused toolbar, and QMP resynchronisation after an oversized message."""
import pytest
from prompt_toolkit.document import Document

from prompt_toolkit.completion import CompleteEvent
from commands.core import BlockCore
from commands.hmp import HmpInterpreter
from images.qcow2 import create_qcow2
from monitor.completer import HmpCompleter

MIB = 1 << 20


# -- 1. block_stream's base completes from the typed device's chain only -------------------
@pytest.fixture
def two_chains(tmp_path):
    """virtio0: A <- B <- C <- D (D stores "C.qcow2", ...); ide0-hd0: base <- disk."""
    previous = None
    for name in "ABCD":
        create_qcow2(str(tmp_path / (name + ".qcow2")), MIB, backing_name=previous)
        previous = name + ".qcow2"
    create_qcow2(str(tmp_path / "base.qcow2"), MIB)
    create_qcow2(str(tmp_path / "disk.qcow2"), MIB, backing_name=str(tmp_path / "base.qcow2"))
    core = BlockCore()
    core.add_drive("virtio0", str(tmp_path / "D.qcow2"))
    core.add_drive("ide0-hd0", str(tmp_path / "disk.qcow2"))
    yield core, tmp_path
    core.shutdown()


def console_completions(core, text):
    return [c.text for c in HmpCompleter(core).get_completions(Document(text), CompleteEvent())]


def complete_line(text, core):
    """(the typed prefix the candidates replace, the candidates, sorted), from the console's completer."""
    completions = list(HmpCompleter(core).get_completions(Document(text), CompleteEvent()))
    words = text.split()
    typed = words[-1] if words and not text[-1:].isspace() else ""
    prefix = text[len(text) + completions[0].start_position:] if completions else typed
    return prefix, sorted(c.text for c in completions)


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


# -- 3. each flag is read once, as QEMU's monitor_parse_arguments does ---------------------
def test_repeated_flag_is_a_positional_word():
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


# -- 4. a paused job shows no throughput and no ETA at once --------------------------------
def test_toolbar_shows_no_rate_or_eta_as_soon_as_a_job_pauses():
    import re
    from monitor.progress import ThroughputMeter
    from monitor.toolbar import JobsToolbar
    from fake_core import FakeCore
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


# -- 2. qemu-io -v: the hex dump, through the console -------------------------------------
def test_qemu_io_read_v_through_the_monitor(two_chains):
    core, _tmp = two_chains
    hmp = HmpInterpreter(core)
    assert hmp.run_line('qemu-io virtio0 "write -P 0x41 16 20"').ok
    result = hmp.run_line('qemu-io virtio0 "read -v 0 40"')
    assert result.output == (
        "00000000:  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................\n"
        "00000010:  41 41 41 41 41 41 41 41 41 41 41 41 41 41 41 41  AAAAAAAAAAAAAAAA\n"
        "00000020:  41 41 41 41 00 00 00 00  AAAA....\n"
        "read 40/40 bytes at offset 0\n")
    assert result.ok
    assert hmp.run_line('qemu-io virtio0 "read -v 0 512"').output.count("\n") == 32 + 1
