"""drive-backup through the real core: point in time while the guest writes, a chain of
incremental backups that qemu-img reads as the disk at each start, the bitmap's fate
on success, cancel and bitmap-mode, QEMU's events and texts, and the do-better checks
(nothing is created by a refused call, an existing file is never recreated)."""
import os
import threading

import pytest

from conftest import require_qemu, run
from oracle import check_clean, identical, info

from commands.core import BlockCore
from commands.errors import qmp_error
from commands.hmp import HmpInterpreter

SIZE = 64 << 20


@pytest.fixture
def disk(tmp_path):
    require_qemu()
    base, top = str(tmp_path / "base.qcow2"), str(tmp_path / "top.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", base, str(SIZE))
    run("qemu-io", "-c", "write -P 0xbb 0 24M", base)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
    run("qemu-io", "-c", "write -P 0xdd 20M 8M", top)
    core = BlockCore()
    core.add_drive("virtio0", top)
    events = []
    core.events.subscribe(events.append)
    yield core, tmp_path, events
    core.shutdown()


def guest(core, command):
    core.execute("x-blockmon-qemu-io", {"device": "virtio0", "command": command})


def reference(core, tmp_path, name):
    """The guest's disk right now, as a standalone image (read through our core)."""
    path = str(tmp_path / name)
    run("qemu-img", "create", "-q", "-f", "qcow2", path, str(SIZE))
    image = core.active_image("virtio0")
    from images.qcow2 import Qcow2Image
    out = Qcow2Image.open(path)
    for offset in range(0, SIZE, 4 << 20):
        out.write(offset, image.read(offset, 4 << 20))
    out.close()
    return path


def writer(core, offsets, pattern):
    """Guest writes in a thread while a job runs."""
    def body():
        for n, offset in enumerate(offsets):
            guest(core, "write -P %d %d 64k" % (pattern + n % 16, offset))
    thread = threading.Thread(target=body)
    thread.start()
    return thread


def statuses(events, job_id):
    return [e["data"]["status"] if e["event"] == "JOB_STATUS_CHANGE" else e["event"]
            for e in events if job_id in (e["data"].get("id"), e["data"].get("device"))]


def test_full_backup_is_the_disk_at_the_start_while_the_guest_writes(disk):
    core, tmp_path, events = disk
    ref = reference(core, tmp_path, "ref.qcow2")
    target = str(tmp_path / "full.qcow2")
    core.execute("drive-backup", {"device": "virtio0", "target": target, "sync": "full",
                                  "speed": 8 << 20})
    (job,) = core.execute("query-block-jobs")
    assert (job["type"], job["len"]) == ("backup", SIZE)
    thread = writer(core, [(n * 5 << 20) + 4096 for n in range(12)], 0x40)
    thread.join()
    core.execute("block-job-set-speed", {"device": "virtio0", "speed": 0})
    assert core.wait_jobs(timeout=120)
    assert identical(ref, target)[0] and check_clean(target)[0]
    assert info(target).get("backing-filename") is None
    assert statuses(events, "virtio0") == ["created", "running", "paused", "running", "waiting",
                                           "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"]
    done = next(e for e in events if e["event"] == "BLOCK_JOB_COMPLETED")
    assert done["data"] == {"type": "backup", "device": "virtio0", "len": SIZE,
                            "offset": SIZE, "speed": 0}
    assert core.execute("query-block")[0]["inserted"]["file"].endswith("top.qcow2")


def test_incremental_chain_reads_as_the_disk_at_each_start(disk):
    """Acceptance 1: full, writes, incremental, writes, incremental; each backup read
    through its chain equals the disk when that backup started (writes run during jobs)."""
    core, tmp_path, _ = disk
    core.execute("block-dirty-bitmap-add", {"node": "virtio0", "name": "b0",
                                            "persistent": True})
    chain, refs = [], []
    for n in range(3):
        refs.append(reference(core, tmp_path, "ref%d.qcow2" % n))
        target = str(tmp_path / ("bk%d.qcow2" % n))
        args = {"device": "virtio0", "target": target, "job-id": "bk%d" % n, "speed": 4 << 20}
        if n == 0:
            args.update(sync="full", bitmap="b0", **{"bitmap-mode": "on-success"})
        else:
            run("qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.basename(chain[-1]),
                "-F", "qcow2", target, str(SIZE))
            args.update(sync="incremental", bitmap="b0", mode="existing")
        core.execute("drive-backup", args)
        thread = writer(core, [((n * 7 + k * 3) % 60 << 20) + 512 for k in range(8)], 0x60)
        thread.join()
        core.execute("block-job-set-speed", {"device": "bk%d" % n, "speed": 0})
        assert core.wait_jobs(timeout=120)
        chain.append(target)
        assert identical(refs[n], target)[0], n
        assert check_clean(target)[0]
    # an incremental copies what the bitmap had, not the disk: far less than its size
    assert os.path.getsize(chain[2]) < 4 << 20
    count = core.execute("query-block")[0]["inserted"]["dirty-bitmaps"][0]["count"]
    assert count == 16 * 65536      # the writes made during the last backup (2 granules each)


def test_cancelled_incremental_keeps_every_bit(disk):
    core, tmp_path, _ = disk
    core.execute("block-dirty-bitmap-add", {"node": "virtio0", "name": "b0"})
    guest(core, "write 1M 4M")
    core.execute("drive-backup", {"device": "virtio0", "target": str(tmp_path / "i.qcow2"),
                                  "sync": "incremental", "bitmap": "b0", "speed": 1 << 20})
    busy = core.execute("query-block")[0]["inserted"]["dirty-bitmaps"][0]
    assert (busy["busy"], busy["recording"], busy["count"]) == (True, True, 4 << 20)
    guest(core, "write 40M 64k")
    core.execute("block-job-cancel", {"device": "virtio0", "force": True})
    assert core.wait_jobs(timeout=60)
    bitmap = core.active_image("virtio0").dirty_bitmaps.get("b0")
    assert bitmap.extents() == [(1 << 20, 4 << 20), (40 << 20, 65536)]
    assert not bitmap.busy and bitmap.enabled


def test_bitmap_mode_never_keeps_the_bits_after_success(disk):
    core, tmp_path, _ = disk
    core.execute("block-dirty-bitmap-add", {"node": "virtio0", "name": "b0"})
    guest(core, "write 1M 64k")
    core.execute("drive-backup", {"device": "virtio0", "target": str(tmp_path / "b.qcow2"),
                                  "sync": "bitmap", "bitmap": "b0", "bitmap-mode": "never"})
    assert core.wait_jobs(timeout=60)
    assert core.active_image("virtio0").dirty_bitmaps.get("b0").extents() == [(1 << 20, 65536)]


def test_sync_top_and_none_targets(disk):
    core, tmp_path, _ = disk
    top_target = str(tmp_path / "t.qcow2")
    core.execute("drive-backup", {"device": "virtio0", "target": top_target, "sync": "top"})
    assert core.wait_jobs(timeout=60)
    assert info(top_target)["backing-filename"] == "base.qcow2"     # relative, as the chain
    assert identical(str(tmp_path / "top.qcow2"), top_target, force_share=True)[0]  # top is live
    none_target = str(tmp_path / "n.qcow2")
    ref = reference(core, tmp_path, "ref.qcow2")
    core.execute("drive-backup", {"device": "virtio0", "target": none_target, "sync": "none",
                                  "job-id": "pull"})
    guest(core, "write -P 0x77 3M 128k")
    (job,) = core.execute("query-block-jobs")
    assert (job["status"], job["len"], job["offset"]) == ("running", SIZE, 131072)
    # the target holds the old data of what the guest overwrote: through a frozen copy
    # of the source it reads as the disk at the start
    run("qemu-img", "convert", "-U", "-O", "qcow2", str(tmp_path / "top.qcow2"),
        str(tmp_path / "frozen.qcow2"))
    core.execute("block-job-cancel", {"device": "pull"})
    assert core.wait_jobs(timeout=60)
    run("qemu-img", "rebase", "-u", "-b", "frozen.qcow2", "-F", "qcow2", none_target)
    assert identical(ref, none_target)[0]


@pytest.mark.parametrize("extra,text", [
    ({"sync": "incremental"}, "must provide a valid bitmap name for 'incremental' sync mode"),
    ({"sync": "bitmap"}, "must provide a valid bitmap name for 'bitmap' sync mode"),
    ({"sync": "incremental", "bitmap": "nosuch"}, "Bitmap 'nosuch' could not be found"),
    ({"sync": "full", "bitmap": "nosuch"}, "Bitmap 'nosuch' could not be found"),
    ({"sync": "full", "bitmap-mode": "always"}, "Cannot specify bitmap sync mode without a bitmap"),
    ({"sync": "full", "speed": -1}, "Parameter 'speed' expects a non-negative value"),
    ({"sync": "top", "format": "raw"}, "Backing file not supported for file format 'raw'"),
    ({"sync": "full", "format": "foo"}, "Unknown file format 'foo'"),
    ({"sync": "full", "mode": "existing"},
     "Could not open '%s': No such file or directory"),
    ({"sync": "full", "job-id": "1x"}, "Invalid job ID '1x'"),
])
def test_refusals_create_nothing(disk, extra, text):
    core, tmp_path, _ = disk
    target = str(tmp_path / "e.qcow2")
    with pytest.raises(Exception) as err:
        core.execute("drive-backup", dict({"device": "virtio0", "target": target}, **extra))
    assert qmp_error(err.value)["desc"] == text.replace("%s", target)
    assert not os.path.exists(target) and core.execute("query-block-jobs") == []


def test_an_existing_file_is_never_recreated_and_a_busy_device_refuses(disk):
    core, tmp_path, _ = disk
    target = str(tmp_path / "keep.qcow2")
    with open(target, "wb") as f:
        f.write(b"precious")
    with pytest.raises(Exception) as err:
        core.execute("drive-backup", {"device": "virtio0", "target": target, "sync": "full"})
    assert qmp_error(err.value)["desc"] == ("Could not create '%s': File exists (mode=existing, "
                                            "or -n, writes into it)" % target)
    assert open(target, "rb").read() == b"precious"
    core.execute("drive-backup", {"device": "virtio0", "target": str(tmp_path / "a.qcow2"),
                                  "sync": "full", "speed": 1 << 20})
    with pytest.raises(Exception) as err:
        core.execute("drive-backup", {"device": "virtio0", "target": str(tmp_path / "b.qcow2"),
                                      "sync": "full", "job-id": "other"})
    assert qmp_error(err.value)["desc"] == \
        "Node 'virtio0' is busy: block device is in use by block job: backup"
    assert not os.path.exists(str(tmp_path / "b.qcow2"))
    core.execute("block-job-cancel", {"device": "virtio0"})
    assert core.wait_jobs(timeout=60)


def test_hmp_drive_backup(disk):
    core, tmp_path, _ = disk
    hmp = HmpInterpreter(core)
    assert hmp.run_line("help drive_backup").output.startswith(
        "drive_backup [-n] [-f] [-c] device target [format] -- initiates a point-in-time\n")
    result = hmp.run_line("drive_backup virtio0")
    assert result.output == ('drive_backup: string expected\n'
                             'Try "help drive_backup" for more information\n')
    assert hmp.run_line("drive_backup -f virtio0 %s" % (tmp_path / "h.qcow2")).output == ""
    assert core.wait_jobs(timeout=60)
    assert identical(str(tmp_path / "top.qcow2"), str(tmp_path / "h.qcow2"),
                     force_share=True)[0]                                   # top is live


def test_failed_incremental_keeps_every_bit_and_reports_the_error(disk):
    """A target that fails every write: BLOCK_JOB_ERROR, then BLOCK_JOB_COMPLETED with the
    error; the bitmap still has its bits and the writes made meanwhile."""
    from images.jobs.backup import BackupJob
    from images.faults import FaultInjectingImage
    from images.qcow2 import Qcow2Image, create_qcow2
    core, tmp_path, events = disk
    core.execute("block-dirty-bitmap-add", {"node": "virtio0", "name": "b0"})
    guest(core, "write 2M 128k")
    top = core.active_image("virtio0")
    create_qcow2(str(tmp_path / "bad.qcow2"), SIZE)
    target = FaultInjectingImage(Qcow2Image.open(str(tmp_path / "bad.qcow2")))
    target.inject("write", 0, None)
    job = BackupJob("bad", core.events, top, target, "bitmap", bitmap=top.dirty_bitmaps.get("b0"),
                    bitmaps=top.dirty_bitmaps, bitmap_mode="on-success")
    core.jobs_registry.add(job)
    job.start()
    assert job.wait(60)
    target.close()
    assert [e["data"] for e in events if e["event"] == "BLOCK_JOB_ERROR"] == [
        {"device": "bad", "operation": "write", "action": "report"}]
    done = next(e["data"] for e in events if e["event"] == "BLOCK_JOB_COMPLETED")
    assert done["error"] and done["offset"] == 0
    assert top.dirty_bitmaps.get("b0").extents() == [(2 << 20, 131072)]
    assert not top.dirty_bitmaps.get("b0").busy


def test_the_read_write_path_gives_the_same_backup(disk):
    """A target that cannot take kernel-side copies (a wrapper) gets read and write."""
    from images.faults import FaultInjectingImage
    from images.jobs.backup import BackupJob
    from images.qcow2 import Qcow2Image, create_qcow2
    core, tmp_path, _ = disk
    ref = reference(core, tmp_path, "ref.qcow2")
    path = str(tmp_path / "slow.qcow2")
    create_qcow2(path, SIZE)
    target = FaultInjectingImage(Qcow2Image.open(path))
    job = BackupJob("slow", core.events, core.active_image("virtio0"), target, "full",
                    target_is_fresh=True, speed=16 << 20)
    core.jobs_registry.add(job)
    job.start()
    writer(core, [(n * 3 << 20) + 100 for n in range(20)], 0x30).join()
    assert job.wait(120) and job.error is None
    target.close()
    assert identical(ref, path)[0] and check_clean(path)[0]
