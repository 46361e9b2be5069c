"""NBD reads from a read plan (commands/read_plan.py): one chain walk, data of read-only
layers sent from a duplicated descriptor after the device lock is released, extents
cached by windows while no layer's map changes.

The plan is checked against the image's own read path in process, and end to end
with real clients: nbdcopy and qemu-img compare over NBD on the 4-layer benchmark
chain, also while a snapshot and a stream change the graph under the reader."""
import os
import random
import threading

from conftest import require_tool, run
from nbd_helpers import Blockmon, build_chain

from commands.block_backend import BlockBackend
from commands.core import BlockCore
from commands.read_plan import ExtentCache, FileRange, plan_read
from images.chain import close_chain, open_image
from images.qcow2.image import Qcow2Image

MiB = 1024 * 1024


def materialize(plan, length):
    """The bytes a client receives for ``plan``."""
    out = bytearray()
    for offset, size, data in plan.pieces:
        assert offset == plan.pieces[0].offset + len(out)
        if data is None:
            out += bytes(size)
        elif isinstance(data, FileRange):
            got = os.pread(data.fd, size, data.offset)
            out += got + bytes(size - len(got))
        else:
            out += data
    assert len(out) == length
    return bytes(out)


def ranges(size, count, seed):
    rng = random.Random(seed)
    for _ in range(count):
        length = rng.choice((4096, 65536, 256 * 1024, 3 * MiB + 512, 9 * MiB))
        offset = rng.randrange(0, size - length) // 512 * 512
        yield offset, length


def test_plans_match_the_read_path_on_the_bench_chain(bench_chain_256m):
    top = open_image(os.path.join(bench_chain_256m, "D.qcow2"), read_only=True)
    try:
        backend = BlockBackend(image=top)
        sent_from_files = 0
        for offset, length in ranges(top.virtual_size, 60, seed=3):
            plan = backend.plan_read(offset, length)
            try:
                sent_from_files += sum(isinstance(p.data, FileRange) for p in plan.pieces)
                assert materialize(plan, length) == top.read(offset, length), (offset, length)
            finally:
                plan.close()
        assert sent_from_files                  # read-only layers go out as file ranges
    finally:
        close_chain(top)


def test_a_plan_outlives_the_close_of_its_images(bench_chain_256m):
    top = open_image(os.path.join(bench_chain_256m, "D.qcow2"), read_only=True)
    offset, length = 3 * MiB, 8 * MiB
    expected = top.read(offset, length)
    plan = plan_read(top, offset, length)
    close_chain(top)                            # as a stream's end closes what it streamed out
    try:
        assert materialize(plan, length) == expected
    finally:
        plan.close()


def test_a_plan_in_flight_holds_none_of_the_image_locks(chain_copy):
    """After the chain is closed, a plan still sending must not keep its lock bytes:
    another opener may take the file for writing at once."""
    top = open_image(os.path.join(chain_copy, "D.qcow2"), read_only=True)
    plan = plan_read(top, 0, 8 * MiB)
    try:
        assert any(isinstance(piece.data, FileRange) for piece in plan.pieces)
        close_chain(top)
        writer = Qcow2Image.open(os.path.join(chain_copy, "A.qcow2"), read_only=False)
        writer.close()
    finally:
        plan.close()


def test_the_extent_cache_sees_writes_that_bypass_the_backend(chain_copy):
    """A job writes into the top directly (not through the backend): the cached windows
    must not answer from the layer below any more."""
    top = open_image(os.path.join(chain_copy, "D.qcow2"))
    try:
        cache = ExtentCache()
        offset, length = 2 * MiB, 2 * MiB      # D leaves most of it to the layers below
        for _ in range(3):                      # the second and third come from windows
            plan = plan_read(top, offset, length, cache)
            before = materialize(plan, length)
            plan.close()
        assert before == top.read(offset, length)
        top.write(offset + 64 * 1024, b"\x5e" * 128 * 1024)      # allocates in D
        plan = plan_read(top, offset, length, cache)
        try:
            after = materialize(plan, length)
        finally:
            plan.close()
        assert after == top.read(offset, length) != before
        assert after[64 * 1024:192 * 1024] == b"\x5e" * 128 * 1024
    finally:
        close_chain(top)


def test_reads_after_a_stream_closed_the_cached_layers(chain_copy):
    core = BlockCore()
    try:
        core.add_drive("virtio0", os.path.join(chain_copy, "D.qcow2"))
        backend = core.backend("virtio0")
        size = backend.virtual_size
        expected = {}
        for offset, length in ranges(size, 12, seed=5):
            for _ in range(2):                  # warm the windows with the old chain
                plan = backend.plan_read(offset, length)
                expected[offset, length] = materialize(plan, length)
                plan.close()
        core.execute("block-stream", {"device": "virtio0"})
        core.wait_jobs()
        assert backend.image.backing is None    # B and C (and A) are closed now
        for (offset, length), data in expected.items():
            plan = backend.plan_read(offset, length)
            try:
                assert materialize(plan, length) == data
            finally:
                plan.close()
    finally:
        core.shutdown()


def test_read_only_export_reads_the_chain_as_qemu_img(bench_chain_256m, tmp_path):
    require_tool("nbdcopy", "libnbd-bin")
    top = os.path.join(bench_chain_256m, "D.qcow2")
    expected = str(tmp_path / "expected.raw")
    run("qemu-img", "convert", "-O", "raw", top, expected)
    blockmon = Blockmon(top + ",readonly=on", str(tmp_path), exports=(
        "type=nbd,id=D,node-name=virtio0,name=D,writable=off",))
    try:
        copied = str(tmp_path / "copied.raw")
        run("nbdcopy", blockmon.uri(), copied)          # multi-conn, 256 KiB requests
        run("qemu-img", "compare", "-f", "raw", "-F", "raw", expected, copied)
        # QEMU's own NBD client: other request sizes, structured reads
        run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", blockmon.uri(), top)
    finally:
        status, _, err = blockmon.stop()
    assert status == 0, err


def test_nbd_reads_while_a_snapshot_and_a_stream_change_the_graph(chain_copy, tmp_path):
    """No writer: every read over NBD, before, during and after the live copy, must give
    the original disk, while images are switched, reopened and closed under it."""
    require_tool("nbdcopy", "libnbd-bin")
    top = os.path.join(chain_copy, "D.qcow2")
    expected = str(tmp_path / "expected.raw")
    run("qemu-img", "convert", "-O", "raw", top, expected)
    blockmon = Blockmon(top, str(tmp_path))
    qmp = blockmon.qmp()
    copies, failures, stop = [], [], threading.Event()

    def reader():
        while not stop.is_set() or len(copies) < 2:
            copy = str(tmp_path / ("copy%d.raw" % (len(copies) % 2)))
            result = run("nbdcopy", blockmon.uri(), copy, check=False)
            compared = run("qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", expected,
                           copy, check=False)
            if result.returncode or compared.returncode:
                failures.append(result.stderr + compared.stdout + compared.stderr)
                return
            copies.append(copy)

    thread = threading.Thread(target=reader, daemon=True)
    try:
        thread.start()
        qmp.execute("human-monitor-command", {"command-line": "snapshot_blkdev virtio0 %s"
                                              % (tmp_path / "E.qcow2")})
        qmp.execute("block-stream", {"device": "virtio0", "speed": 64 * MiB})
        qmp.wait_event("BLOCK_JOB_COMPLETED")
        during = len(copies)
        stop.set()
        thread.join(300)
        qmp.execute("quit")
    finally:
        stop.set()
        qmp.close()
        status, _, err = blockmon.stop()
    assert status == 0, err
    assert not failures, failures[0]
    assert len(copies) >= 2 and len(copies) > during


def test_a_df_read_is_one_data_chunk_with_holes_as_zeros(tmp_path):
    from test_nbd_fuzz import RawClient
    top = build_chain(str(tmp_path))
    blockmon = Blockmon(top, str(tmp_path))
    try:
        client = RawClient(blockmon.sock)
        client.go(b"D")
        offset, length = 1 * MiB, 4 * MiB       # data of A and D, a zero cluster, holes
        sparse = client.read(offset, length)
        client.request(0, offset, length, flags=4)             # NBD_CMD_FLAG_DF
        error, chunks = client.reply()
        assert error == 0 and len(chunks) == 1 and chunks[0][0] == 1     # OFFSET_DATA
        assert chunks[0][1][:8] == offset.to_bytes(8, "big")
        assert chunks[0][1][8:] == sparse
        client.request(0, 6 * MiB, 64 * 1024)                  # a hole, without DF: a hole chunk
        assert [kind for kind, _ in client.reply()[1]] == [2]
        client.request(0, 6 * MiB, 64 * 1024, flags=4)
        assert client.reply()[1] == [(1, (6 * MiB).to_bytes(8, "big") + bytes(64 * 1024))]
        client.close()
    finally:
        blockmon.stop()
