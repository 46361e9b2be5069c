"""Kill test: a child doing random writes, zero writes and discards is killed with
SIGKILL at 20 moments; after each kill qemu-img check finds no errors (leaks are
allowed) and every operation the child logged as returned reads back."""
import signal
import subprocess
import sys
import time

from conftest import ROOT, require_qemu, run
from images.qcow2 import Qcow2Image, create_qcow2

SIZE = 4 * 1024 * 1024
CHILD = r"""
import random, sys
sys.path.insert(0, sys.argv[1])
from images.qcow2 import Qcow2Image
top, base, log, seed, size = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
rng = random.Random(seed)
image = Qcow2Image.open(top)
image.backing = Qcow2Image.open(base, read_only=True)
with open(log, "a") as out:
    for n in range(1000000):
        op = rng.choice(["write", "write", "write", "zero", "discard"])
        offset = rng.randrange(size)
        length = min(rng.randrange(1, 96 * 1024), size - offset)
        byte = rng.randrange(1, 256)
        out.write("S %s %d %d %d\n" % (op, offset, length, byte))
        out.flush()
        if op == "write":
            image.write(offset, bytes([byte]) * length)
        elif op == "zero":
            image.write_zeroes(offset, length)
        else:
            image.discard(offset, length)
        out.write("D\n")
        out.flush()
"""


def replay(log_path, model, cluster):
    """Apply the logged, returned operations; return the range of the one in flight."""
    pending = None
    with open(log_path) as f:
        for line in f:
            parts = line.split()
            if parts[0] == "S":
                pending = (parts[1], int(parts[2]), int(parts[3]), int(parts[4]))
            elif parts == ["D"] and pending:
                op, offset, length, byte = pending
                if op == "write":
                    model[offset:offset + length] = bytes([byte]) * length
                elif op == "zero":
                    model[offset:offset + length] = bytes(length)
                else:   # v3 with a backing file: whole clusters read as zeros
                    lo = -(-offset // cluster) * cluster
                    hi = (offset + length) // cluster * cluster
                    if offset + length == SIZE:
                        hi = SIZE
                    if hi > lo:
                        model[lo:hi] = bytes(hi - lo)
                pending = None
    return pending


def wait_for_lines(log_path, count, child):
    while child.poll() is None:
        with open(log_path) as f:
            if sum(1 for line in f if line == "D\n") >= count:
                return
        time.sleep(0.002)


def test_sigkill_leaves_consistent_image(tmp_path):
    require_qemu()
    base, top = str(tmp_path / "base.qcow2"), str(tmp_path / "top.qcow2")
    create_qcow2(base, SIZE, cluster_size=65536)
    image = Qcow2Image.open(base)
    image.write(0, bytes(range(256)) * (SIZE // 256))
    image.close()
    cluster = 512
    create_qcow2(top, SIZE, cluster_size=cluster, backing_name="base.qcow2",
                 backing_format="qcow2")
    model = bytearray(bytes(range(256)) * (SIZE // 256))
    for moment in range(20):
        log_path = str(tmp_path / ("log%d" % moment))
        open(log_path, "w").close()
        child = subprocess.Popen([sys.executable, "-c", CHILD, ROOT, top, base, log_path,
                                  str(moment), str(SIZE)])
        wait_for_lines(log_path, 2 + 3 * moment, child)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL
        in_flight = replay(log_path, model, cluster)
        check = subprocess.run(["qemu-img", "check", top], capture_output=True, text=True)
        assert check.returncode in (0, 3), check.stdout + check.stderr
        assert "ERROR" not in check.stdout + check.stderr
        reader = Qcow2Image.open(top, read_only=True)
        reader.backing = Qcow2Image.open(base, read_only=True)
        ours = reader.read(0, SIZE)
        reader.backing.close()      # its lock would keep the next writer out
        reader.close()
        raw = str(tmp_path / "top.raw")
        run("qemu-img", "convert", "-O", "raw", top, raw)
        with open(raw, "rb") as f:
            theirs = f.read()
        assert ours == theirs
        expected = bytearray(model)
        if in_flight:   # the operation that was running may have landed or not
            _, offset, length, _ = in_flight
            lo, hi = offset, offset + length
            expected[lo:hi] = ours[lo:hi]
        assert ours == expected, "moment %d: a returned write did not read back" % moment
        model[:] = ours
