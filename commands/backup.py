"""``drive-backup`` (QMP), ``drive_backup`` (HMP) and ``blockdev-backup``: checks, target,
job start.

QEMU 7.2's blockdev.c/backup.c checks and texts, in QEMU's order, with two
improvements from the reference's "do better" list: every argument is checked
before any file is created, and an existing target file is never recreated unless
``mode`` is ``existing`` (``-n``).  The target: sync=full/incremental/bitmap gets
no backing file, sync=top the source's backing file, sync=none the source itself
(named as the chain names it: relative names stay relative when the target is in
the same directory).  The job is ``images.jobs.backup.BackupJob``, started through
``commands.block_jobs`` like every block job; the device is never switched.
"""
import os

from images.chain import chain_of, close_chain, open_image, probe_format
from images.dirty_bitmap import CHECK_ALLOW_RO
from images.driver import FORMATS
from images.jobs.backup import BackupJob
from images.jobs.blockjob import SPEED_ERROR
from images.jobs.states import id_wellformed
from images.qcow2 import Qcow2Image, create_qcow2
from images.raw import create_raw

from .block_jobs import JobKind, JobPlan, default_job_id, start_block_job
from .errors import CommandError
from .snapshot import _image_in_file

BACKUP_TARGET_CLUSTER = 65536


def _check_bitmap_arguments(top, args):
    """do_backup_common's bitmap checks; returns (sync, bitmap, mode)."""
    sync, name, mode = args["sync"], args.get("bitmap"), args.get("bitmap-mode")
    if sync in ("bitmap", "incremental") and name is None:
        raise CommandError("must provide a valid bitmap name for '%s' sync mode" % sync)
    if sync == "incremental":
        if mode is not None and mode != "on-success":
            raise CommandError("Bitmap sync mode must be 'on-success' when using sync mode "
                               "'incremental'")
        sync, mode = "bitmap", "on-success"
    bitmap = None
    if name is not None:
        bitmap = top.dirty_bitmaps.find(name)
        if bitmap is None:
            raise CommandError("Bitmap '%s' could not be found" % name)
        if mode is None:
            raise CommandError("Bitmap sync mode must be given when providing a bitmap")
        bitmap.check(CHECK_ALLOW_RO)
        if sync == "none":
            raise CommandError("sync mode 'none' does not produce meaningful bitmap outputs")
        if mode == "never" and sync != "bitmap":
            raise CommandError("Bitmap sync mode 'never' has no meaningful effect when combined "
                               "with sync mode '%s'" % sync)
    if name is None and mode is not None:
        raise CommandError("Cannot specify bitmap sync mode without a bitmap")
    return sync, bitmap, mode or "on-success"


def _check_job(core, args, job_id):
    """The job's own checks, early: the target must not be made for a job refused later."""
    if not id_wellformed(job_id):
        raise CommandError("Invalid job ID '%s'" % job_id)
    if any(job.id == job_id for job in core.jobs()):
        raise CommandError("Job ID '%s' already in use" % job_id)
    if args.get("speed", 0) < 0:
        raise CommandError(SPEED_ERROR)


def _backing_for(top, sync, target_path):
    """(image the target's backing reads, name to store): the source chain below or at it."""
    image = {"top": top.backing, "none": top}.get(sync)
    if image is None:
        return None, None
    # Both names below are relative to the top's directory: keep one only beside it.
    same_dir = os.path.dirname(os.path.abspath(target_path)) == os.path.dirname(top.path)
    stored = top.backing_name if sync == "top" else os.path.basename(top.path)
    if not (same_dir and stored and not os.path.isabs(stored)):
        stored = image.path
    return image, stored


def _check_target(table, top, path, fmt, mode, sync, compress=False):
    if fmt is not None and fmt not in FORMATS:
        raise CommandError("Unknown file format '%s'" % fmt)
    if compress:
        kind = fmt if fmt is not None else (probe_format(path) if os.path.exists(path) else None)
        if kind == "raw":       # QEMU's backup_job_create, after creating the target; here before
            raise CommandError("Compression is not supported for this drive")
    backing, _ = _backing_for(top, sync, path)
    if backing is not None and fmt == "raw":
        raise CommandError("Backing file not supported for file format 'raw'")
    if _image_in_file(table, path) is not None:
        raise CommandError("Could not create '%s': it is an image of a device's backing chain"
                           % path)
    if mode == "existing":
        if not os.path.exists(path):
            raise CommandError("Could not open '%s': No such file or directory" % path)
        return
    if os.path.exists(path):
        raise CommandError("Could not create '%s': File exists (mode=existing, or -n, writes "
                           "into it)" % path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise CommandError("Could not create '%s': %s" % (
            path, "No such file or directory" if not os.path.isdir(directory)
            else "Permission denied"))


def _open_target(top, path, fmt, mode, sync):
    """Create (unless existing) and open the target; its backing is linked to the live
    source images, never opened a second time."""
    typed, path = path, os.path.abspath(path)     # lock errors name the file as typed
    backing, stored = _backing_for(top, sync, path)
    if mode != "existing":
        if fmt == "raw":
            create_raw(path, top.virtual_size, filename=typed)
        else:
            create_qcow2(path, top.virtual_size, BACKUP_TARGET_CLUSTER, backing_name=stored,
                         backing_format=backing.format_name if backing is not None else None,
                         filename=typed)
    if backing is not None:
        target = Qcow2Image.open(path, filename=typed)
        target.backing = backing
        return target, lambda: target.close()
    target = open_image(path, format=fmt, filename=typed)   # an existing target keeps its chain
    return target, lambda: close_chain(target)


def drive_backup(core, args):
    """QMP drive-backup through the shared job start (commands.block_jobs)."""
    kind = JobKind("backup", plan=lambda table, top, device, a: _plan_backup(core, top, a))
    return start_block_job(core, args, kind)


def _plan_backup(core, top, args):
    """Every check runs in late_check, before ``create`` makes the target file."""
    table, decided = core.devices, {}

    def late_check():
        _check_job(core, args, default_job_id(table, top, args))
        sync, decided["bitmap"], decided["bitmap_mode"] = _check_bitmap_arguments(top, args)
        if sync == "top" and top.backing is None:
            sync = "full"               # QEMU: nothing below to leave out
        mode = args.get("mode", "absolute-paths")
        # QEMU: without a format, a new target takes the source's, an existing one is probed
        fmt = args.get("format", None if mode == "existing" else top.format_name)
        _check_target(table, top, args["target"], fmt, mode, sync, args.get("compress", False))
        decided.update(sync=sync, mode=mode, fmt=fmt)

    def create(job_id, events, on_finished, on_error=None, **common):
        target, close = _open_target(top, args["target"], decided["fmt"], decided["mode"],
                                     decided["sync"])
        # The target is a node while the job runs (named after its file, as the
        # device table names every image): block-export-add can export it.
        table.add_job_node(target)
        def close_target():
            table.release_job_node(target)
            core.exports.when_unused(target, lambda: (close(), table.forget_unused_nodes()))
        decided["close"] = close_target
        try:
            return BackupJob(job_id, events, top, target, decided["sync"],
                             bitmap=decided["bitmap"], bitmaps=top.dirty_bitmaps,
                             bitmap_mode=decided["bitmap_mode"],
                             target_is_fresh=decided["mode"] != "existing",
                             compress=args.get("compress", False),
                             on_finished=on_finished,
                             on_source_error=args.get("on-source-error", "report"),
                             on_target_error=args.get("on-target-error", "report"), **common)
        except Exception:
            decided["close"]()
            raise
    return JobPlan(held=[top], create=create, late_check=late_check,
                   cleanup=lambda job: decided["close"]())


def blockdev_backup(core, args):
    """QMP blockdev-backup: drive-backup onto a node of the graph (blockdev-add's)."""
    kind = JobKind("backup", plan=lambda table, top, device, a: _plan_node_backup(core, top, a))
    return start_block_job(core, args, kind)


def _plan_node_backup(core, top, args):
    """backup_job_create's checks on the target node, after the source's busy check; the
    target is held busy with the source and stays open (its owner closes it)."""
    table, decided = core.devices, {}
    target = table.lookup(args["target"], args["target"])

    def late_check():
        _check_job(core, args, default_job_id(table, top, args))
        sync, decided["bitmap"], decided["bitmap_mode"] = _check_bitmap_arguments(top, args)
        decided["sync"] = "full" if sync == "top" and top.backing is None else sync
        if target is top:
            raise CommandError("Source and target cannot be the same")
        if args.get("compress") and target.format_name != "qcow2":
            raise CommandError("Compression is not supported for this drive")
        if any(target in chain_of(device.top) for device in table.devices()):
            raise CommandError("Node '%s' is busy: block device is in use" % args["target"])
        if target.read_only:
            raise CommandError("Block node is read-only")
        if target.virtual_size != top.virtual_size:
            raise CommandError("Source and target image have different sizes")

    def create(job_id, events, on_finished, on_error=None, **common):
        return BackupJob(job_id, events, top, target, decided["sync"], bitmap=decided["bitmap"],
                         bitmaps=top.dirty_bitmaps, bitmap_mode=decided["bitmap_mode"],
                         compress=args.get("compress", False), on_finished=on_finished,
                         on_source_error=args.get("on-source-error", "report"),
                         on_target_error=args.get("on-target-error", "report"), **common)
    return JobPlan(held=[top, target], create=create, late_check=late_check)


def hmp_drive_backup(hmp, args):
    """hmp_drive_backup: -f full (else top), -n existing, -c compress; the job id is the device."""
    qmp = {"device": args["device"], "target": args["target"],
           "sync": "full" if args.get("full") else "top",
           "mode": "existing" if args.get("reuse") else "absolute-paths"}
    if "format" in args:
        qmp["format"] = args["format"]
    if args.get("compress"):
        qmp["compress"] = True
    hmp.core.execute("drive-backup", qmp)
    return ""
