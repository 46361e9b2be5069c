"""A live copy with a real NBD guest: qemu-io writes over NBD while blockmon takes a
snapshot (the export moves to the new overlay) and streams the whole chain into it.
Afterwards the overlay stands alone, is clean for qemu-img check, and holds every
write on top of the original content."""
import os
import random
import threading

from conftest import run
from nbd_helpers import SIZE, Blockmon, build_chain

MiB = 1024 * 1024


class Writer(threading.Thread):
    """Sequential qemu-io writes over NBD (each its own client) until told to stop."""

    def __init__(self, target, seed=11):
        super().__init__(daemon=True)
        self.target = target
        self.random = random.Random(seed)
        self.stop = threading.Event()
        self.done = []              # (offset, length, pattern), in the order they completed
        self.failures = []

    def run(self):
        count = 0
        while not self.stop.is_set() or count < 4:
            commands = []
            for _ in range(4):
                offset = self.random.randrange(0, SIZE // 4096) * 4096
                length = min(self.random.choice((4096, 65536, 200704)), SIZE - offset)
                pattern = 1 + count % 250
                commands.append((offset, length, pattern))
                count += 1
            argv = ["qemu-io", "-f", "raw"]
            for offset, length, pattern in commands:
                argv += ["-c", "write -P %d %d %d" % (pattern, offset, length)]
            result = run(*(argv + [self.target]), check=False)
            if result.returncode != 0 or "failed" in result.stdout + result.stderr:
                self.failures.append(result.stdout + result.stderr)
                return
            self.done.extend(commands)


def test_nbd_writes_survive_snapshot_and_stream(tmp_path):
    top = build_chain(str(tmp_path))
    original = str(tmp_path / "original.raw")
    run("qemu-img", "convert", "-O", "raw", top, original)
    blockmon = Blockmon(top, str(tmp_path))
    overlay = str(tmp_path / "E.qcow2")
    qmp = blockmon.qmp()
    writer = Writer(blockmon.uri())
    try:
        writer.start()
        while len(writer.done) < 8 and writer.is_alive():
            threading.Event().wait(0.05)
        assert qmp.execute("human-monitor-command",
                           {"command-line": "snapshot_blkdev virtio0 %s" % overlay}) == ""
        exports = qmp.execute("query-block-exports")
        assert exports[0]["node-name"] == "E"          # the export followed the new top
        qmp.execute("block-stream", {"device": "virtio0", "speed": 1 * MiB})
        before = len(writer.done)
        qmp.wait_event("BLOCK_JOB_COMPLETED")
        assert len(writer.done) > before        # writes landed while the stream ran
        writer.stop.set()
        writer.join(120)
        assert not writer.failures and len(writer.done) >= 12
        qmp.execute("quit")
    finally:
        writer.stop.set()
        qmp.close()
        status, _, err = blockmon.stop()
    assert status == 0, err
    info = run("qemu-img", "info", "--output=json", overlay).stdout
    assert "backing-filename" not in info
    assert "No errors were found" in run("qemu-img", "check", overlay).stdout
    with open(original, "rb") as f:
        expected = bytearray(f.read())
    for offset, length, pattern in writer.done:
        expected[offset:offset + length] = bytes([pattern]) * length
    final = str(tmp_path / "final.raw")
    run("qemu-img", "convert", "-O", "raw", overlay, final)
    with open(final, "rb") as f:
        assert f.read() == bytes(expected)
    assert os.path.getsize(final) == SIZE
