"""Kill test for the bitmap store: a child opens an image with persistent bitmaps,
writes as a guest, adds and removes bitmaps and closes, over and over; SIGKILL at 15
moments.  After each kill qemu-img check finds no errors (leaks are allowed), QEMU and
blockmon both open the image, and every bitmap is either consistent and holds at
least the writes of the rounds that were closed, or IN_USE (inconsistent)."""
import json
import signal
import subprocess
import sys
import time

from conftest import ROOT, require_qemu, run
from images.qcow2 import Qcow2Image, create_qcow2

SIZE = 32 << 20
CHILD = r"""
import random, sys
sys.path.insert(0, sys.argv[1])
from images.guest_io import GuestView
from images.qcow2 import Qcow2Image
path, log, seed = sys.argv[2], sys.argv[3], int(sys.argv[4])
rng = random.Random(seed)
with open(log, "a") as out:
    for round in range(100000):
        image = Qcow2Image.open(path)
        guest = GuestView(image)
        for n in range(rng.randrange(1, 6)):
            offset = rng.randrange(image.virtual_size - 65536)
            guest.write(offset, b"\x5a" * rng.randrange(1, 65536))
            out.write("W %d\n" % offset)
        name = "extra%d" % (round % 3)
        if image.dirty_bitmaps.find(name) is None:
            image.dirty_bitmaps.create(name, image.virtual_size, 65536, persistent=True)
        else:
            image.remove_persistent_bitmap(name)
            image.dirty_bitmaps.release(image.dirty_bitmaps.get(name))
        image.close()
        out.write("C\n")
        out.flush()
"""


def closed_writes(log_path):
    """Offsets written in rounds whose close returned."""
    done, pending = [], []
    with open(log_path) as f:
        for line in f:
            if line.startswith("W "):
                pending.append(int(line.split()[1]))
            elif line == "C\n":
                done += pending
                pending = []
    return done


def test_sigkill_during_bitmap_stores_leaves_valid_images(tmp_path):
    require_qemu()
    path = str(tmp_path / "disk.qcow2")
    create_qcow2(path, SIZE)
    run("qemu-img", "bitmap", "--add", path, "b0")
    written = []
    for moment in range(15):
        log_path = str(tmp_path / ("log%d" % moment))
        open(log_path, "w").close()
        child = subprocess.Popen([sys.executable, "-c", CHILD, ROOT, path, log_path, str(moment)])
        time.sleep(0.05 + 0.03 * moment)
        child.send_signal(signal.SIGKILL)
        child.wait()
        written += closed_writes(log_path)
        check = subprocess.run(["qemu-img", "check", path], capture_output=True, text=True)
        assert check.returncode in (0, 3), check.stdout + check.stderr
        assert "ERROR" not in check.stdout + check.stderr
        stored = json.loads(run("qemu-img", "info", "--output=json", path).stdout)
        flags = {b["name"]: b["flags"] for b in
                 stored["format-specific"]["data"].get("bitmaps", [])}
        image = Qcow2Image.open(path, read_only=True)
        b0 = image.dirty_bitmaps.find("b0")
        if b0 is None:      # killed while the directory was rewritten in place: QEMU drops them
            assert "b0" not in flags
        elif "in-use" in flags["b0"]:
            assert b0.inconsistent
        else:
            assert not b0.inconsistent and all(b0.is_dirty(offset) for offset in written)
        image.close()
        if b0 is None or b0.inconsistent:           # start again from a fresh bitmap
            writer = Qcow2Image.open(path)
            if b0 is not None:
                writer.remove_persistent_bitmap("b0")
                writer.dirty_bitmaps.release(writer.dirty_bitmaps.get("b0"))
            writer.dirty_bitmaps.create("b0", writer.virtual_size, 65536, persistent=True)
            writer.close()
            written = []
