"""block-stream on the benchmark chain, judged by qemu-img (issue 3, acceptance 1 and 7)."""
import os
import shutil

import pytest

from commands.core import BlockCore
from tests.oracle import check_clean, fingerprints, identical, info, map_json

LAYERS = ["A.qcow2", "B.qcow2", "C.qcow2", "D.qcow2"]


@pytest.fixture
def pristine(bench_chain_256m):
    return os.path.join(bench_chain_256m, "D.qcow2")


def open_core(chain_dir):
    core = BlockCore()
    core.add_drive("virtio0", os.path.join(chain_dir, "D.qcow2"))
    events = []
    core.events.subscribe(events.append)
    return core, events


def stream_and_wait(core, **arguments):
    arguments.setdefault("device", "virtio0")
    assert core.execute("block-stream", arguments) == {}
    assert core.wait_jobs(timeout=300)


def event_names(events):
    return [e["event"] if e["event"] != "JOB_STATUS_CHANGE" else e["data"]["status"] for e in events]


def test_full_stream_flattens_the_chain(chain_copy, pristine):
    paths = [os.path.join(chain_copy, name) for name in LAYERS]
    lower_before = fingerprints(paths[:3])
    core, events = open_core(chain_copy)
    stream_and_wait(core)
    core.shutdown()

    assert event_names(events) == ["created", "running", "waiting", "pending",
                                   "BLOCK_JOB_COMPLETED", "concluded", "null", "SHUTDOWN"]
    completed = events[4]["data"]
    assert completed == {"type": "stream", "device": "virtio0", "len": 256 << 20,
                         "offset": 256 << 20, "speed": 0}
    top = paths[3]
    assert "backing-filename" not in info(top)
    same, text = identical(top, pristine)
    assert same, text
    for path in paths:
        ok, text = check_clean(path)
        assert ok, text
    assert fingerprints(paths[:3]) == lower_before
    # every byte of guest data now lives in D itself (depth 0)
    assert all(extent["depth"] == 0 for extent in map_json(top))


def test_stream_with_base_b_keeps_relative_name(chain_copy, pristine):
    paths = [os.path.join(chain_copy, name) for name in LAYERS]
    lower_before = fingerprints(paths[:3])
    before_map = map_json(paths[3])
    core, _ = open_core(chain_copy)
    stream_and_wait(core, base="B.qcow2")
    assert core.execute("query-block")[0]["inserted"]["backing_file_depth"] == 2
    core.shutdown()

    top_info = info(paths[3])
    assert top_info["backing-filename"] == "B.qcow2"
    assert top_info["backing-filename-format"] == "qcow2"
    same, text = identical(paths[3], pristine)
    assert same, text
    for path in paths:
        ok, text = check_clean(path)
        assert ok, text
    assert fingerprints(paths[:3]) == lower_before
    # everything D or C held now lives in D itself (depth 0); B and A still serve the rest
    for extent in map_json(paths[3]):
        if extent["present"]:
            assert extent["depth"] in (0, 1, 2)
    assert_moved_to_top(before_map, map_json(paths[3]), max_old_depth=1)


def assert_moved_to_top(before, after, max_old_depth):
    """Every present extent that lived at depth <= max_old_depth before is at depth 0 after."""
    for old in before:
        if not old["present"] or old["depth"] > max_old_depth:
            continue
        start, end = old["start"], old["start"] + old["length"]
        for new in after:
            if new["start"] < end and new["start"] + new["length"] > start:
                assert new["depth"] == 0, (old, new)


def test_seed_form_base_as_node_name(chain_copy, pristine):
    core, _ = open_core(chain_copy)
    stream_and_wait(core, base="A")
    core.shutdown()
    top = os.path.join(chain_copy, "D.qcow2")
    assert info(top)["backing-filename"] == "A.qcow2"
    assert identical(top, pristine)[0]


def test_intermediate_stream_into_c(chain_copy, pristine):
    paths = [os.path.join(chain_copy, name) for name in LAYERS]
    before = fingerprints([paths[0], paths[1], paths[3]])
    core, _ = open_core(chain_copy)
    core.execute("block-stream", {"device": "C", "job-id": "c-job", "base": "A"})
    assert core.wait_jobs(timeout=300)
    core.shutdown()
    assert info(paths[2])["backing-filename"] == "A.qcow2"
    assert fingerprints([paths[0], paths[1], paths[3]]) == before
    assert identical(paths[3], pristine)[0]
    for path in paths:
        assert check_clean(path)[0]


def test_base_equal_to_backing_completes_with_nothing(chain_copy):
    core, events = open_core(chain_copy)
    d_before = fingerprints([os.path.join(chain_copy, "D.qcow2")])
    stream_and_wait(core, base="C.qcow2")
    core.shutdown()
    completed = [e for e in events if e["event"] == "BLOCK_JOB_COMPLETED"]
    assert completed[0]["data"]["len"] == 0 and completed[0]["data"]["offset"] == 0
    assert fingerprints([os.path.join(chain_copy, "D.qcow2")]) == d_before


def test_live_copy_snapshot_then_stream(chain_copy, pristine, tmp_path):
    paths = [os.path.join(chain_copy, name) for name in LAYERS]
    before = fingerprints(paths)
    new_dir = tmp_path / "new-path"
    new_dir.mkdir()
    target = str(new_dir / "disk.img")
    core, _ = open_core(chain_copy)
    core.execute("blockdev-snapshot-sync", {"device": "virtio0", "snapshot-file": target, "format": "qcow2"})
    assert core.execute("query-block")[0]["inserted"]["file"] == target
    stream_and_wait(core)
    core.shutdown()
    assert "backing-filename" not in info(target)
    assert identical(target, pristine)[0]
    assert check_clean(target)[0]
    assert fingerprints(paths) == before


def test_stream_of_image_without_backing(tmp_path):
    from images.qcow2 import create_qcow2
    path = str(tmp_path / "solo.qcow2")
    create_qcow2(path, 1 << 20)
    core = BlockCore()
    core.add_drive("virtio0", path)
    events = []
    core.events.subscribe(events.append)
    stream_and_wait(core)
    core.shutdown()
    completed = [e["data"] for e in events if e["event"] == "BLOCK_JOB_COMPLETED"]
    assert completed == [{"type": "stream", "device": "virtio0", "len": 0, "offset": 0, "speed": 0}]
