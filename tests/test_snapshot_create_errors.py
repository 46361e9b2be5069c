"""snapshot_blkdev / blockdev-snapshot-sync report the error the create really got, as QEMU
(``Could not create '...': Not a directory`` for a path under a regular file)."""
import os
import subprocess
import sys

import pytest

from blockmon_process import Blockmon
from tests.conftest import ROOT, run
from tests.oracle import fingerprints


@pytest.fixture
def disk(tmp_path, qemu_img):
    top = str(tmp_path / "top.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", top, "4M")
    (tmp_path / "regular").write_bytes(b"not a directory\n")
    return top, tmp_path


@pytest.mark.parametrize("name, reason", [
    ("regular/x.qcow2", "Not a directory"),
    ("nodir/x.qcow2", "No such file or directory"),
    (".", "Is a directory"),
])
def test_console_reports_the_real_create_error(disk, name, reason):
    top, directory = disk
    target = str(directory / name)
    before = fingerprints([top, str(directory / "regular")])
    result = subprocess.run([sys.executable, "-m", "monitor", top, "-c",
                             "snapshot_blkdev virtio0 %s qcow2" % target, "-c", "info block"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines()[0] == "Error: Could not create '%s': %s" % (target, reason)
    assert "virtio0 (top): %s (qcow2)" % top in result.stdout
    assert fingerprints([top, str(directory / "regular")]) == before


def test_qmp_names_the_file_as_typed(disk):
    top, directory = disk
    process = Blockmon(["-drive", "file=%s,if=none,id=virtio0" % top])
    try:
        client = process.qmp()
        relative = os.path.relpath(str(directory / "regular" / "y.qcow2"), ROOT)
        assert client.cmd("blockdev-snapshot-sync", {"device": "virtio0", "snapshot-file": relative}) == {
            "error": {"class": "GenericError",
                      "desc": "Could not create '%s': Not a directory" % relative}}
    finally:
        process.close()
