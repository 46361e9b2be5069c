"""Issue 10, image locking: blockmon, QEMU 7.2, qemu-img and qemu-io keep each other out.

Every scenario runs the real peers: ``qemu-system-x86_64 -machine none`` with a
``-drive``, qemu-img and qemu-io, and blockmon itself (``python -m monitor`` with a
QMP socket).  Texts are checked exactly and against what QEMU prints for the same
refusal; the lock bytes are read from /proc/locks and compared with the bytes
QEMU holds in the same role; every file's sha256 is unchanged after a refusal.
"""
import hashlib
import os
import subprocess
import sys

import pytest

from conftest import ROOT, connect_when_listening, require_qemu_system
from qmp_clients import QmpEventClient, job_ended, remove_tree, short_tempdir

LIMIT = 120                   # seconds for a peer to start or stop, however slow the machine
MiB = 1 << 20
WRITE_HELD = 'Failed to get "write" lock'
SHARED_HELD = 'Failed to get shared "write" lock'


def hint(name):
    return "Is another process using the image [%s]?" % name


def tool(*argv, cwd):
    return subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=LIMIT)


@pytest.fixture
def chain():
    """A <- B <- C <- D (16 MiB; A all 0xaa, B its first 8 MiB 0xbb) in a short directory."""
    require_qemu_system()
    directory = short_tempdir()
    steps = [("create", "-q", "-f", "qcow2", "A.qcow2", "16M"),
             ("create", "-q", "-f", "qcow2", "-b", "A.qcow2", "-F", "qcow2", "B.qcow2"),
             ("create", "-q", "-f", "qcow2", "-b", "B.qcow2", "-F", "qcow2", "C.qcow2"),
             ("create", "-q", "-f", "qcow2", "-b", "C.qcow2", "-F", "qcow2", "D.qcow2"),
             ("create", "-q", "-f", "qcow2", "T.qcow2", "16M"),
             ("create", "-q", "-f", "qcow2", "E.qcow2", "16M")]
    for step in steps:
        assert tool("qemu-img", *step, cwd=directory).returncode == 0
    for name, pattern, length in (("A.qcow2", "0xaa", "16M"), ("B.qcow2", "0xbb", "8M")):
        assert tool("qemu-io", "-c", "write -P %s 0 %s" % (pattern, length), name,
                    cwd=directory).returncode == 0
    yield directory
    remove_tree(directory)


def sums(directory):
    return {name: hashlib.sha256(open(os.path.join(directory, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(directory)) if name.endswith(".qcow2")}


def lock_bytes(path):
    """The byte ranges of the open-file-description locks on ``path`` (any process)."""
    status = os.stat(path)
    key = "%02x:%02x:%d" % (os.major(status.st_dev), os.minor(status.st_dev), status.st_ino)
    ranges = []
    with open("/proc/locks") as locks:
        for line in locks:
            fields = line.split()
            if "OFDLCK" in fields and key in fields:
                ranges.append((int(fields[-2]), int(fields[-1])))
    return sorted(ranges)


def chain_locks(directory, names="ABCD"):
    return {name: lock_bytes(os.path.join(directory, name + ".qcow2")) for name in names}


class Peer:
    """A process serving QMP on a unix socket in ``directory``: QEMU or blockmon."""

    def __init__(self, argv, directory, env=None):
        self.directory = directory
        self.socket = os.path.join(directory, "qmp-%d.sock" % id(self))
        self.process = subprocess.Popen(argv + ["-qmp", "unix:%s,server=on,wait=off" % self.socket],
                                        cwd=directory, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        import time
        connect_when_listening(self.socket, time.monotonic() + LIMIT).close()
        self.qmp = QmpEventClient(self.socket)
        self.qmp.sock.settimeout(LIMIT)

    def hmp(self, line):
        reply = self.qmp.cmd("human-monitor-command", {"command-line": line})
        return reply["return"].replace("\r\n", "\n")

    def stop(self):
        self.qmp.cmd("quit")
        self.qmp.close()
        self.process.communicate(timeout=LIMIT)


def qemu(directory, *drives):
    argv = ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none"]
    for drive in drives:
        argv += ["-drive", drive]
    return Peer(argv, directory)


def blockmon(directory, *args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return Peer([sys.executable, "-m", "monitor"] + list(args), directory, env)


def blockmon_once(directory, *args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "monitor"] + list(args), cwd=directory, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=LIMIT)


def qemu_refusal(directory, drive):
    """What a second QEMU prints when it cannot lock ``drive``: (status, its two lines)."""
    result = tool("qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
                  "-drive", drive, cwd=directory)
    prefix = "qemu-system-x86_64: -drive %s: " % drive
    assert result.stderr.startswith(prefix), result.stderr
    return result.returncode, result.stderr[len(prefix):]


# -- QEMU holds the chain: blockmon refuses, with QEMU's lines --------------------------------

@pytest.mark.parametrize("drive, first_line", [
    ("file=D.qcow2", WRITE_HELD),
    ("file=D.qcow2,readonly=on", SHARED_HELD),
])
def test_start_up_refuses_an_image_qemu_holds(chain, drive, first_line):
    before = sums(chain)
    vm = qemu(chain, "file=D.qcow2,if=none,id=d0")
    try:
        result = blockmon_once(chain, "-drive", drive, "-c", "info block")
        status, theirs = qemu_refusal(chain, drive + ",if=none,id=d0")
    finally:
        vm.stop()
    ours = "%s\n%s\n" % (first_line, hint("D.qcow2"))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "blockmon: -drive %s: %s" % (drive.split(",")[0], ours)
    assert (status, theirs) == (1, ours)
    assert sums(chain) == before


def test_start_up_refuses_a_backing_file_qemu_writes(chain):
    before = sums(chain)
    vm = qemu(chain, "file=B.qcow2,if=none,id=d0")
    try:
        result = blockmon_once(chain, "D.qcow2", "-c", "info block")
        status, theirs = qemu_refusal(chain, "file=D.qcow2,if=none,id=d0")
    finally:
        vm.stop()
    # B is two levels below D: QEMU says so once per level
    ours = "Could not open backing file: " * 2 + "%s\n%s\n" % (SHARED_HELD, hint("B.qcow2"))
    assert (result.returncode, result.stderr) == (1, "blockmon: -drive file=D.qcow2: " + ours)
    assert (status, theirs) == (1, ours)
    assert sums(chain) == before


def test_snapshot_onto_a_file_qemu_holds_is_refused_and_writes_nothing(chain):
    vm = qemu(chain, "file=T.qcow2,if=none,id=t0")
    ours = blockmon(chain, "E.qcow2")
    try:
        before = sums(chain)
        lines = [ours.hmp("snapshot_blkdev virtio0 T.qcow2 qcow2"),
                 ours.hmp("snapshot_blkdev -n virtio0 T.qcow2 qcow2")]
        replies = [ours.qmp.cmd("blockdev-snapshot-sync",
                                {"device": "virtio0", "snapshot-file": "T.qcow2", "mode": mode})
                   for mode in ("absolute-paths", "existing")]
        after = sums(chain)
        info = ours.hmp("info block")
    finally:
        ours.stop()
        vm.stop()
    refused = "Error: %s\n%s\n" % (WRITE_HELD, hint("T.qcow2"))
    assert lines == [refused, refused]
    assert replies == [{"error": {"class": "GenericError", "desc": WRITE_HELD}}] * 2
    assert after == before
    assert "Backing file" not in info            # E is still the active image, alone


def test_qemu_refuses_a_snapshot_onto_a_file_blockmon_holds(chain):
    ours = blockmon(chain, "T.qcow2")
    vm = qemu(chain, "file=E.qcow2,if=none,id=d0")
    try:
        before = sums(chain)
        theirs = [vm.hmp("snapshot_blkdev d0 T.qcow2 qcow2"),
                  vm.hmp("snapshot_blkdev -n d0 T.qcow2 qcow2")]
        after = sums(chain)
    finally:
        vm.stop()
        ours.stop()
    refused = "Error: %s\n%s\n" % (WRITE_HELD, hint("T.qcow2"))
    assert theirs == [refused, refused]
    assert after == before


# -- blockmon holds the chain: QEMU and its tools refuse ------------------------------------

def test_qemu_tools_refuse_what_blockmon_writes_and_info_u_reads(chain):
    ours = blockmon(chain, "D.qcow2")
    try:
        before = sums(chain)
        info = tool("qemu-img", "info", "D.qcow2", cwd=chain)
        write_top = tool("qemu-io", "-c", "write 0 512", "D.qcow2", cwd=chain)
        write_base = tool("qemu-io", "-c", "write 0 512", "B.qcow2", cwd=chain)
        shared = tool("qemu-img", "info", "-U", "D.qcow2", cwd=chain)
        read_base = tool("qemu-io", "-r", "-c", "read -P 0xbb 0 512", "B.qcow2", cwd=chain)
        # qemu-nbd would serve until killed if it got the image; refused, it exits at once
        nbd = tool("qemu-nbd", "-r", "-f", "qcow2", "-k", os.path.join(chain, "nbd.sock"),
                   "D.qcow2", cwd=chain)
        status, vm_text = qemu_refusal(chain, "file=D.qcow2,if=none,id=d0")
        after = sums(chain)
    finally:
        ours.stop()
    assert (info.returncode, info.stderr) == (
        1, "qemu-img: Could not open 'D.qcow2': %s\n%s\n" % (SHARED_HELD, hint("D.qcow2")))
    assert (write_top.returncode, write_top.stderr) == (
        1, "qemu-io: can't open device D.qcow2: %s\n%s\n" % (WRITE_HELD, hint("D.qcow2")))
    assert (write_base.returncode, write_base.stderr) == (
        1, "qemu-io: can't open device B.qcow2: %s\n%s\n" % (WRITE_HELD, hint("B.qcow2")))
    assert shared.returncode == 0 and "backing file: C.qcow2" in shared.stdout
    assert read_base.returncode == 0, read_base.stdout + read_base.stderr   # backing files are shared
    assert (status, vm_text) == (1, "%s\n%s\n" % (WRITE_HELD, hint("D.qcow2")))
    assert (nbd.returncode, nbd.stderr) == (1, "qemu-nbd: Failed to blk_new_open 'D.qcow2': "
                                            "%s\n%s\n" % (SHARED_HELD, hint("D.qcow2")))
    assert after == before


@pytest.mark.parametrize("qemu_drive, our_args", [
    ("file=D.qcow2,if=none,id=d0", ["D.qcow2"]),
    ("file=D.qcow2,if=none,id=d0,readonly=on", ["-drive", "file=D.qcow2,readonly=on"]),
])
def test_blockmon_holds_the_bytes_qemu_holds_in_the_same_role(chain, qemu_drive, our_args):
    vm = qemu(chain, qemu_drive)
    theirs = chain_locks(chain)
    vm.stop()
    ours = blockmon(chain, *our_args)
    mine = chain_locks(chain)
    ours.stop()
    assert all(theirs.values()) and mine == theirs
    assert chain_locks(chain) == dict.fromkeys("ABCD", [])      # released when blockmon quits


def test_locks_are_released_when_blockmon_quits(chain):
    ours = blockmon(chain, "D.qcow2")
    held = tool("qemu-io", "-c", "write -P 0x11 0 512", "D.qcow2", cwd=chain).returncode
    ours.stop()
    assert held == 1
    assert chain_locks(chain) == dict.fromkeys("ABCD", [])
    written = tool("qemu-io", "-c", "write -P 0x11 0 512", "D.qcow2", cwd=chain)
    assert written.returncode == 0, written.stderr


# -- file.locking=off ------------------------------------------------------------------------

def test_file_locking_off_takes_no_locks_and_ignores_qemus(chain):
    vm = qemu(chain, "file=D.qcow2,if=none,id=d0")
    try:
        refused = blockmon_once(chain, "-drive", "file=D.qcow2,readonly=on", "-c", "info block")
        opened = blockmon_once(chain, "-drive", "file=D.qcow2,readonly=on,file.locking=off",
                               "-c", "info block")
    finally:
        vm.stop()
    assert refused.returncode == 1 and SHARED_HELD in refused.stderr
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout.startswith("virtio0 (D): ") and "read-only" in opened.stdout.splitlines()[0]
    ours = blockmon(chain, "-drive", "file=D.qcow2,file.locking=off")
    try:
        bytes_held = chain_locks(chain)
        info = tool("qemu-img", "info", "D.qcow2", cwd=chain)
    finally:
        ours.stop()
    assert bytes_held == dict.fromkeys("ABCD", [])
    assert info.returncode == 0, info.stderr


# -- jobs: a stream and a snapshot keep qemu-img out; extra rights are given back --------------

def _stream_locks(peer, device, base_node):
    """The chain's lock bytes before, while a 1 MiB/s stream of ``device`` runs (and
    what ``qemu-img info`` of the image streamed into gets), and after it."""
    target = "D.qcow2" if base_node is None else "C.qcow2"
    before = chain_locks(peer.directory)
    arguments = {"device": device, "job-id": "j", "speed": MiB}
    if base_node is not None:
        arguments["base-node"] = base_node
    reply = peer.qmp.cmd("block-stream", arguments)
    assert reply == {"return": {}}, reply
    during = chain_locks(peer.directory)
    info = tool("qemu-img", "info", target, cwd=peer.directory)
    assert peer.qmp.cmd("block-job-set-speed", {"device": "j", "speed": 0}) == {"return": {}}
    peer.qmp.wait_event(lambda event: event["event"] == "BLOCK_JOB_COMPLETED")
    # QEMU closes the streamed-out images when the job is freed, after its last event:
    # one more round trip lets it get there.
    peer.qmp.wait_event(job_ended("j"))
    assert peer.qmp.cmd("query-block-jobs") == {"return": []}
    after = chain_locks(peer.directory)
    return before, during, (info.returncode, info.stderr), after


@pytest.fixture
def two_chains(chain):
    """The chain, and a copy of it beside (QEMU works on one, blockmon on the other)."""
    copy = short_tempdir()
    for name in os.listdir(chain):
        if name.endswith(".qcow2"):
            assert tool("cp", "--sparse=always", name, os.path.join(copy, name),
                        cwd=chain).returncode == 0
    yield chain, copy
    remove_tree(copy)


@pytest.mark.parametrize("streamed, ours_args, theirs_args", [
    ("D", ("virtio0", None), ("d0", None)),     # into the active image
    ("C", ("C", "A"), ("c", "a")),              # into a backing file, whose header is rewritten
])
def test_a_stream_takes_qemus_rights_and_gives_them_back(two_chains, streamed, ours_args,
                                                         theirs_args):
    theirs_dir, ours_dir = two_chains
    vm = qemu(theirs_dir, "file=D.qcow2,if=none,id=d0,backing.node-name=c,"
              "backing.backing.backing.node-name=a")
    theirs = _stream_locks(vm, *theirs_args)
    vm.stop()
    peer = blockmon(ours_dir, "D.qcow2")
    ours = _stream_locks(peer, *ours_args)
    peer.stop()
    before, during, refused, after = ours
    assert during[streamed] != before[streamed]         # more rights while it runs ...
    assert after[streamed] == before[streamed]          # ... given back after it
    assert refused[0] == 1 and SHARED_HELD in refused[1]
    assert ours == theirs
    assert chain_locks(ours_dir) == dict.fromkeys("ABCD", [])


def test_a_snapshot_locks_the_new_overlay_and_keeps_qemu_img_out(two_chains):
    theirs_dir, ours_dir = two_chains
    results = []
    for directory, start, device in ((theirs_dir, lambda d: qemu(d, "file=D.qcow2,if=none,id=d0"), "d0"),
                                     (ours_dir, lambda d: blockmon(d, "D.qcow2"), "virtio0")):
        peer = start(directory)
        reply = peer.qmp.cmd("blockdev-snapshot-sync",
                             {"device": device, "snapshot-file": os.path.join(directory, "S.qcow2"),
                              "format": "qcow2"})
        assert reply == {"return": {}}, reply
        held = dict(chain_locks(directory), S=lock_bytes(os.path.join(directory, "S.qcow2")))
        info = tool("qemu-img", "info", "S.qcow2", cwd=directory)
        write = tool("qemu-io", "-c", "write 0 512", "D.qcow2", cwd=directory)
        peer.stop()
        results.append((held, info.returncode, write.returncode))
    assert results[0] == results[1]
    held, info_status, write_status = results[1]
    assert held["S"] and held["S"] != held["D"] and (info_status, write_status) == (1, 1)


# -- in one process: close releases, a refused open or change leaves nothing behind -----------

def test_close_and_a_refused_open_leave_no_lock_bytes(chain):
    from images.chain import close_chain, open_image
    from images.errors import ImageLockError
    top = open_image(os.path.join(chain, "D.qcow2"))
    assert all(chain_locks(chain).values())
    close_chain(top)
    assert chain_locks(chain) == dict.fromkeys("ABCD", [])
    vm = qemu(chain, "file=B.qcow2,if=none,id=d0")
    try:
        with pytest.raises(ImageLockError) as refused:
            open_image(os.path.join(chain, "D.qcow2"), filename="D.qcow2")
        ours = chain_locks(chain, "CD")
    finally:
        vm.stop()
    assert refused.value.hint == hint("B.qcow2")
    assert ours == dict.fromkeys("CD", [])          # the files opened before B were closed


def test_a_refused_change_keeps_the_bytes_held_before(chain):
    from images.errors import ImageLockError
    from images.locking import JOB_WRITER, READ_ONLY, READ_WRITE, lock_file
    path = os.path.join(chain, "T.qcow2")
    reader = os.open(path, os.O_RDONLY)
    other = os.open(path, os.O_RDONLY)
    try:
        lock_file(reader, path, READ_ONLY)
        held = lock_bytes(path)
        with pytest.raises(ImageLockError) as refused:
            lock_file(other, path, READ_WRITE)        # the reader does not share "write"
        assert lock_bytes(path) == held
        mine = lock_file(other, path, READ_ONLY)      # two readers get along
        with pytest.raises(ImageLockError):
            mine.change(JOB_WRITER)
        assert mine.permissions == READ_ONLY and lock_bytes(path) == sorted(held * 2)
    finally:
        os.close(reader)
        os.close(other)
    assert refused.value.desc == WRITE_HELD and lock_bytes(path) == []
