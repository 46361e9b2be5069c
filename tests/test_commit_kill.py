"""SIGKILL during a commit (issue 13, acceptance 3): at every moment the images pass
``qemu-img check`` (leaks allowed), the guest view is the pristine one, and a second
commit completes.  The killed process is a real BlockCore committing at a set speed."""
import os
import signal
import subprocess
import sys
import time

from tests.commitkit import copy_chain
from tests.conftest import ROOT
from tests.oracle import check_clean, identical, info
from tests.test_commit import chain64  # noqa: F401  (the session's 64 MiB chain)

MiB = 1 << 20

COMMITTER = """
import sys
sys.path.insert(0, %r)
from commands.core import BlockCore
core = BlockCore()
core.add_drive("virtio0", sys.argv[1])
if sys.argv[2] == "hmp":
    print("started", flush=True)
    core.execute("x-blockmon-commit", {"device": "virtio0"})
else:
    core.execute("block-commit", {"device": "virtio0", "top": "C.qcow2", "speed": int(sys.argv[2])})
    print("started", flush=True)
core.wait_jobs()
core.shutdown()
print("done", flush=True)
"""


def _kill_at(top, speed, moment):
    child = subprocess.Popen([sys.executable, "-c", COMMITTER % ROOT, top, speed],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "started"
    time.sleep(moment)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()


def _all_valid(chain):
    for name in "ABCD":
        ok, text = check_clean(os.path.join(chain, name + ".qcow2"), leaks_ok=True)
        assert ok, (name, text)


def _commit_again(top, arguments):
    from commands.core import BlockCore
    core = BlockCore()
    core.add_drive("virtio0", top)
    core.execute("block-commit", dict(arguments, device="virtio0"))
    assert core.wait_jobs(timeout=300)
    core.shutdown()


def test_kill_during_intermediate_commit(chain64, tmp_path):  # noqa: F811
    pristine = os.path.join(chain64, "D.qcow2")
    outcomes = set()
    for i, moment in enumerate([0.0, 0.05, 0.15, 0.3, 0.5, 0.8, 1.2, 3.0]):
        chain = copy_chain(chain64, str(tmp_path / ("c%d" % i)))
        top = os.path.join(chain, "D.qcow2")
        _kill_at(top, str(16 * MiB), moment)
        _all_valid(chain)
        backing = info(top)["backing-filename"]
        assert backing in ("C.qcow2", "A.qcow2"), backing
        outcomes.add(backing)
        assert identical(top, pristine)[0], moment
        if backing == "C.qcow2":
            _commit_again(top, {"top": "C.qcow2"})
        assert info(top)["backing-filename"] == "A.qcow2"
        assert identical(top, pristine)[0], moment
        assert check_clean(os.path.join(chain, "A.qcow2"), leaks_ok=True)[0]
    assert "C.qcow2" in outcomes


def test_kill_during_hmp_commit(chain64, tmp_path):  # noqa: F811
    pristine = os.path.join(chain64, "D.qcow2")
    for i, moment in enumerate([0.0, 0.02, 0.05, 0.1, 0.2]):
        chain = copy_chain(chain64, str(tmp_path / ("h%d" % i)))
        top = os.path.join(chain, "D.qcow2")
        _kill_at(top, "hmp", moment)
        _all_valid(chain)
        assert info(top)["backing-filename"] == "C.qcow2"
        assert identical(top, pristine)[0], moment
