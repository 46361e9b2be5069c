"""Mirrors under guest writes (issue 12, acceptance 2 and 3).

A property test: random guest writes (qemu-io through the device) before READY,
while ready, and racing the complete; afterwards the target equals what the guest
wrote (qemu-img compare against a raw model).  The same with a soft cancel.
Then SIGKILL at several moments of a mirror: the source chain and the target pass
qemu-img check and the source holds exactly the guest's writes that reached it.
"""
import os
import random
import signal
import subprocess
import sys
import threading
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, require_qemu, run
from tests.mirrorkit import identical_shared, check_shared
from tests.mirrorkit import MiB, Session, small_chain

SIZE = 16 * MiB

write_op = st.tuples(st.integers(0, (SIZE - 4 * 65536) // 4096).map(lambda n: n * 4096),
                     st.sampled_from([512, 4096, 65536, 3 * 65536 + 512]),
                     st.one_of(st.integers(1, 255), st.just(None)))     # None: write -z


def qemu_io_line(offset, length, pattern):
    if pattern is None:
        return 'qemu-io virtio0 "write -z %d %d"' % (offset, length)
    return 'qemu-io virtio0 "write -P 0x%02x %d %d"' % (pattern, offset, length)


def apply(model, offset, length, pattern):
    model[offset:offset + length] = bytes([pattern or 0]) * length


def model_of(tmp, top):
    path = os.path.join(tmp, "model.raw")
    run("qemu-img", "convert", "-O", "raw", top, path)
    with open(path, "rb") as f:
        return path, bytearray(f.read())


def write_all(session, model, ops):
    for offset, length, pattern in ops:
        out = session.run(qemu_io_line(offset, length, pattern))
        assert out.startswith("wrote "), out
        apply(model, offset, length, pattern)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sync=st.sampled_from(["full", "top", "none"]),
       copy_mode=st.sampled_from(["background", "write-blocking"]),
       finish=st.sampled_from(["complete", "soft-cancel"]),
       before=st.lists(write_op, max_size=6), ready=st.lists(write_op, max_size=6),
       racing=st.lists(write_op, max_size=6))
def test_target_equals_what_the_guest_wrote(tmp_path_factory, sync, copy_mode, finish, before,
                                            ready, racing):
    require_qemu()
    tmp = str(tmp_path_factory.mktemp("live"))
    top = small_chain(tmp)
    model_path, model = model_of(tmp, top)
    s = Session(top)
    try:
        target = os.path.join(tmp, "target.qcow2")
        assert s.qmp("drive-mirror", {"device": "virtio0", "target": target, "sync": sync,
                                      "copy-mode": copy_mode, "speed": 2 * MiB}) == {}
        write_all(s, model, before)                       # while running, throttled
        s.qmp("block-job-set-speed", {"device": "virtio0", "speed": 0})
        s.wait_status("ready")
        write_all(s, model, ready)
        writer = threading.Thread(target=write_all, args=(s, model, racing))
        writer.start()                                    # races the complete
        if finish == "soft-cancel":
            writer.join()       # the target must equal the source at the cancel: no race
        verb = "block-job-complete" if finish == "complete" else "block-job-cancel"
        assert s.qmp(verb, {"device": "virtio0"}) == {}
        writer.join()
        s.wait_gone()
        if finish == "soft-cancel":
            assert s.core.active_image("virtio0").path == top
        else:
            assert s.core.active_image("virtio0").path == target
        with open(model_path, "wb") as f:
            f.write(model)
    finally:
        s.close()
    # complete: the target holds every write, racing ones included; soft cancel: the
    # target is a copy of the source, which the device still uses.
    assert identical_shared(target, model_path, "qcow2", "raw")[0]
    if finish == "soft-cancel":
        assert identical_shared(top, model_path, "qcow2", "raw")[0]
    assert check_shared(target)[0]


CHILD = r"""
import os, sys, time
sys.path.insert(0, %r)
from commands.core import BlockCore
top, target, moment = sys.argv[1], sys.argv[2], sys.argv[3]
core = BlockCore()
core.add_drive("virtio0", top)
device = core.devices.device("virtio0")
backend = core.backend("virtio0")
core.execute("drive-mirror", {"device": "virtio0", "target": target, "sync": "full",
                              "speed": 4 << 20 if moment == "running" else 0})
def status():
    return core.execute("query-block-jobs")[0]["status"]
if moment != "running":
    while status() != "ready":
        time.sleep(0.001)
if moment == "switch":
    core.execute("block-job-complete", {"device": "virtio0"})
print("started", flush=True)
i = 0
while True:
    i += 1
    offset = (i * 7919 %% 240) * 65536
    with device.io_lock:
        path = device.top.path
        backend.write(offset, bytes([i %% 251 + 1]) * 65536)
    print("wrote %%d %%d %%s" %% (i, offset, path), flush=True)
"""


def test_sigkill_leaves_source_intact_and_images_valid(tmp_path):
    require_qemu()
    tmp = str(tmp_path)
    pristine_top = small_chain(tmp)
    pristine_model_path, pristine = model_of(tmp, pristine_top)
    rng = random.Random(12)
    moments = [("running", 0.2), ("running", 0.5), ("ready", 0.05), ("ready", 0.3),
               ("switch", 0.0), ("switch", 0.01), ("switch", 0.1)]
    for index, (moment, delay) in enumerate(moments):
        work = os.path.join(tmp, "k%d" % index)
        os.mkdir(work)
        for name in ("base", "mid", "top"):
            run("cp", "--sparse=always", os.path.join(tmp, name + ".qcow2"), work)
        top, target = os.path.join(work, "top.qcow2"), os.path.join(work, "target.qcow2")
        child = subprocess.Popen([sys.executable, "-c", CHILD % ROOT, top, target, moment],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "started"
        time.sleep(delay + rng.random() * 0.01)
        child.send_signal(signal.SIGKILL)
        lines = child.stdout.read().splitlines()
        child.wait()
        for name in ("base", "mid", "top"):
            ok, text = check_shared(os.path.join(work, name + ".qcow2"), leaks_ok=True)
            assert ok, (moment, name, text)
        assert check_shared(target, leaks_ok=True)[0], (moment, "target")
        model = bytearray(pristine)
        for line in lines:
            _w, number, offset, path = line.split()
            if path == top:
                apply(model, int(offset), 65536, int(number) % 251 + 1)
        model_path = os.path.join(work, "model.raw")
        with open(model_path, "wb") as f:
            f.write(model)
        # the write in flight at the kill may or may not have landed in the source
        same, text = identical_shared(top, model_path, "qcow2", "raw")
        if not same and lines:
            number = int(lines[-1].split()[1]) + 1
            apply(model, (number * 7919 % 240) * 65536, 65536, number % 251 + 1)
            with open(model_path, "wb") as f:
                f.write(model)
            same, text = identical_shared(top, model_path, "qcow2", "raw")
        assert same, (moment, delay, text)
    assert os.path.exists(pristine_model_path)


def test_a_guest_writing_all_the_time_loses_nothing(tmp_path_factory):
    """One guest thread writes all the time from the command to after the switch (without
    pause in write-blocking mode), in both copy modes; the target then equals every
    write, in order."""
    require_qemu()
    for copy_mode in ("background", "write-blocking"):
        tmp = str(tmp_path_factory.mktemp("busy"))
        top = small_chain(tmp, size_mib=64)
        model_path, model = model_of(tmp, top)
        s = Session(top)
        backend = s.core.backend("virtio0")
        rng, stop, count = random.Random(copy_mode), threading.Event(), [0]

        def guest():
            while not stop.is_set():
                offset = rng.randrange(0, 64 * MiB - 65536, 512)
                data = bytes([rng.randrange(1, 256)]) * rng.choice([512, 4096, 65536])
                backend.write(offset, data)
                model[offset:offset + len(data)] = data
                count[0] += 1
                if copy_mode == "background":
                    # A background mirror converges only if it copies faster than the
                    # guest dirties (QEMU's too); write-blocking mode needs no pause.
                    time.sleep(0.001)

        writer = threading.Thread(target=guest)
        target = os.path.join(tmp, "busy.qcow2")
        try:
            writer.start()
            assert s.qmp("drive-mirror", {"device": "virtio0", "target": target, "sync": "full",
                                          "copy-mode": copy_mode}) == {}
            s.wait_status("ready")
            s.qmp("block-job-complete", {"device": "virtio0"})
            s.wait_gone()
            time.sleep(0.05)
        finally:
            stop.set()
            writer.join()
            s.close()
        with open(model_path, "wb") as f:
            f.write(model)
        assert count[0] > 10
        same, text = identical_shared(target, model_path, "qcow2", "raw")
        assert same, (copy_mode, text)
        assert check_shared(target)[0]
