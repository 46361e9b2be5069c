"""drive-backup compress=true / HMP ``drive_backup -c``: the target's clusters are
stored compressed (qemu-img check counts them), it reads as the disk at the start
while the guest writes, and qemu-img check finds no error; a raw target is refused
before anything is created."""
import json
import os

import pytest

from conftest import require_qemu, run
from oracle import check_clean, identical
from test_backup import SIZE, disk, reference, writer  # noqa: F401  (the fixture)

from commands.errors import qmp_error
from commands.hmp import HmpInterpreter


def compressed_share(path):
    out = run("qemu-img", "check", path).stdout
    return out.split("fragmented, ")[1].split("%")[0] if "compressed" in out else "0"


def test_compressed_full_backup_is_the_disk_at_the_start(disk):  # noqa: F811
    core, tmp_path, events = disk
    ref = reference(core, tmp_path, "ref.qcow2")
    target = str(tmp_path / "c.qcow2")
    core.execute("drive-backup", {"device": "virtio0", "target": target, "sync": "full",
                                  "compress": True, "speed": 8 << 20})
    writer(core, [(n * 5 << 20) + 4096 for n in range(12)], 0x40).join()
    core.execute("block-job-set-speed", {"device": "virtio0", "speed": 0})
    assert core.wait_jobs(timeout=120)
    assert identical(ref, target)[0]
    ok, report = check_clean(target)
    assert ok, report
    assert "100.00% compressed clusters" in report
    # 32 MiB of one-byte patterns: a few KiB per cluster at most
    assert os.path.getsize(target) < 2 << 20
    plain = json.loads(run("qemu-img", "info", "--output=json", ref).stdout)["actual-size"]
    assert os.path.getsize(target) < plain // 8


def test_hmp_c_and_incompressible_data(disk):  # noqa: F811
    core, tmp_path, _events = disk
    core.execute("x-blockmon-qemu-io", {"device": "virtio0", "command": "write -P 0x11 0 1M"})
    noise = os.urandom(1 << 20)
    core.active_image("virtio0").write(4 << 20, noise)   # incompressible: stored plain
    ref = reference(core, tmp_path, "ref.qcow2")
    target = str(tmp_path / "h.qcow2")
    hmp = HmpInterpreter(core)
    assert hmp.run_line("drive_backup -f -c virtio0 %s" % target).output == ""
    assert core.wait_jobs(timeout=120)
    assert identical(ref, target)[0]
    ok, report = check_clean(target)
    assert ok, report
    assert 0 < float(compressed_share(target)) < 100


def test_compress_refused_for_a_raw_target_before_creating_it(disk):  # noqa: F811
    core, tmp_path, _events = disk
    target = str(tmp_path / "c.raw")
    with pytest.raises(Exception) as err:
        core.execute("drive-backup", {"device": "virtio0", "target": target, "sync": "full",
                                      "format": "raw", "compress": True})
    assert qmp_error(err.value)["desc"] == "Compression is not supported for this drive"
    assert not os.path.exists(target)
    run("qemu-img", "create", "-q", "-f", "raw", target, str(SIZE))
    with pytest.raises(Exception) as err:
        core.execute("drive-backup", {"device": "virtio0", "target": target, "sync": "full",
                                      "mode": "existing", "compress": True})
    assert qmp_error(err.value)["desc"] == "Compression is not supported for this drive"
    require_qemu()
