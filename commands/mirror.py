"""``drive-mirror`` and ``blockdev-mirror``: checks in QEMU's order, the target, the job's wiring.

Every argument is checked before any file is created (QEMU formats the target
first, then refuses a bad ``speed``).  A target file is never recreated without
``mode=existing`` (``-n``) and never truncated while it is an image of an open
chain.  A new target's backing name keeps the style of the source chain: relative
when the source names its backing file relatively (QEMU always writes absolute
paths).  Nothing is printed: QEMU's ``Formatting ...`` line goes to its stdout,
never the monitor.

The job (``images.jobs.mirror``) gets three hooks from here: ``drain`` (no guest
request and no graph change while it runs), ``pivot`` (the device now uses the
target) and ``on_finished`` (release the device, close what no chain uses).
"""
import os

from images.chain import chain_of, open_image, probe_format, resolve_backing_path
from images.errors import BlockError
from images.jobs.blockjob import SPEED_ERROR
from images.jobs.mirror import DEFAULT_BUF_SIZE, MirrorJob
from images.jobs.states import id_wellformed
from images.qcow2 import Qcow2Image, create_qcow2
from images.raw import RawImage, create_raw

from .errors import CommandError

KNOWN_FORMATS = ("qcow2", "raw")
MIN_GRANULARITY, MAX_GRANULARITY = 512, 64 * 1024 * 1024


def check_job_options(args, drive=False):
    """The tuning arguments both commands share, with QEMU's texts."""
    if args["sync"] in ("incremental", "bitmap"):
        raise CommandError("Sync mode '%s' not supported" % args["sync"])
    if args.get("speed", 0) < 0:
        raise CommandError(SPEED_ERROR)
    granularity = args.get("granularity", 0)
    if granularity and not MIN_GRANULARITY <= granularity <= MAX_GRANULARITY:
        raise CommandError("Parameter 'granularity' expects a value in range [512B, 64MB]")
    if granularity & (granularity - 1):
        raise CommandError("Parameter 'granularity' expects a power of 2")
    if args.get("buf-size", 0) < 0:
        raise CommandError("Invalid parameter 'buf-size'")
    if "job-id" in args and not id_wellformed(args["job-id"]):
        raise CommandError("Invalid job ID '%s'" % args["job-id"])
    if "replaces" in args:
        if drive and "node-name" not in args:
            raise CommandError("a node-name must be provided when replacing a named node "
                               "of the graph")
        raise CommandError("Parameter 'replaces' is not supported by blockmon")


def source_device(table, name):
    """The device whose active image is mirrored; QEMU's texts for unknown and inner nodes."""
    source = table.lookup(name, name)
    owner = table.device_of(source)
    if owner is None:
        raise CommandError("Need a root block node")
    table.check_not_busy(source)
    return owner, source


def _in_open_chain(table, path):
    real = os.path.realpath(path)
    for image in table.all_images():
        if os.path.realpath(image.path) == real:
            return image
    return None


def backing_name_for(source, base, target_path):
    """The target's stored backing name: relative when the source's own is relative."""
    if base is None:
        return None
    if source.backing_name and not os.path.isabs(source.backing_name):
        return os.path.relpath(base.path, os.path.dirname(target_path))
    return base.path


def plan_target(table, source, args):
    """(sync, format, base) after the checks that need no file: QEMU's order."""
    sync = args["sync"]
    fmt = args.get("format", source.format_name)
    if fmt not in KNOWN_FORMATS:
        raise CommandError("Unknown file format '%s'" % fmt)
    if sync == "top" and source.backing is None:
        sync = "full"           # nothing below the top: QEMU copies the whole disk
    base = {"full": None, "top": source.backing, "none": source}[sync]
    if args.get("mode", "absolute-paths") != "existing" and base is not None and fmt == "raw":
        raise CommandError("Backing file not supported for file format 'raw'")
    return sync, fmt, base


def _check_new_node_name(table, name):
    if name is None:
        return
    if not id_wellformed(name):
        raise CommandError("Invalid node-name: '%s'" % name)
    if table.node(name) is not None or table.device(name) is not None:
        raise CommandError("Duplicate nodes with node-name='%s'" % name)


def _open_error(path, err):
    return CommandError("Could not open '%s': %s" % (path, err.strerror or "Input/output error"))


def create_target(table, source, path, fmt, base):
    """Create a new target file, after every check; returns its absolute path."""
    absolute = os.path.abspath(path)
    member = _in_open_chain(table, absolute)
    if member is not None:
        raise CommandError("Could not create '%s': it is image '%s' of an open chain"
                           % (path, member.node_name))
    if os.path.lexists(absolute):
        raise CommandError("Could not create '%s': the file exists (reuse it with -n or "
                           "mode=existing)" % path)
    directory = os.path.dirname(absolute)
    if not os.path.isdir(directory):
        raise CommandError("Could not create '%s': No such file or directory" % path)
    if not os.access(directory, os.W_OK):
        raise CommandError("Could not create '%s': Permission denied" % path)
    if fmt == "raw":
        create_raw(absolute, source.virtual_size)
    else:
        create_qcow2(absolute, source.virtual_size,
                     backing_name=backing_name_for(source, base, absolute),
                     backing_format=base.format_name if base is not None else None)
    return absolute


def open_target(table, source, path, fmt, base, existing):
    """Open the target alone and link its backing to the open image it names."""
    absolute = os.path.abspath(path)
    if existing:
        member = _in_open_chain(table, absolute)
        if member is not None:
            raise CommandError("Could not open '%s': it is image '%s' of an open chain"
                               % (path, member.node_name))
        try:
            fmt = fmt or probe_format(absolute)
        except BlockError as err:
            raise CommandError(err.desc) from err
    cls = RawImage if fmt == "raw" else Qcow2Image
    try:
        target = cls.open(absolute)
    except OSError as err:
        raise _open_error(path, err) from err
    try:
        _link_backing(target, source, base, existing)
    except BaseException:
        target.close()
        raise
    return target


def _link_backing(target, source, base, existing):
    if not existing:
        target.backing = base
        return
    wanted = resolve_backing_path(target)
    if wanted is None:
        return
    for image in chain_of(source):
        if os.path.realpath(image.path) == os.path.realpath(wanted):
            target.backing = image
            return
    target.backing = open_image(wanted, format=target.backing_format or None, read_only=True)


def drive_mirror(core, args):
    table = core.devices
    with table.graph_lock:
        if core.closing:
            raise CommandError("Cannot start a block job: blockmon is shutting down")
        owner, source = source_device(table, args["device"])
        check_job_options(args, drive=True)
        sync, fmt, base = plan_target(table, source, args)
        _check_new_node_name(table, args.get("node-name"))
        existing = args.get("mode", "absolute-paths") == "existing"
        if existing and not os.path.exists(args["target"]):
            raise CommandError("Could not open '%s': No such file or directory" % args["target"])
        _check_job_id_free(core, args, owner)
        created = None if existing else create_target(table, source, args["target"], fmt, base)
        try:
            target = open_target(table, source, args["target"], None if existing and
                                 "format" not in args else fmt, base, existing)
        except BaseException:
            if created:
                os.unlink(created)
            raise
        table.add_job_node(target, args.get("node-name"))
        start_mirror(core, owner, source, target, dict(args, sync=sync), whole_disk=False)
    return {}


def blockdev_mirror(core, args):
    table = core.devices
    with table.graph_lock:
        if core.closing:
            raise CommandError("Cannot start a block job: blockmon is shutting down")
        owner, source = source_device(table, args["device"])
        target = table.lookup(args["target"], args["target"])
        check_job_options(args)
        if target in chain_of(source) or table.device_of(target) is not None:
            raise CommandError("Node '%s' is busy: block device is in use" % args["target"])
        table.check_not_busy(target)
        _check_job_id_free(core, args, owner)
        sync = args["sync"]
        if sync == "top" and source.backing is None:
            sync = "full"
        start_mirror(core, owner, source, target, dict(args, sync=sync),
                     whole_disk=sync == "full")
    return {}


def _check_job_id_free(core, args, owner):
    job_id = args.get("job-id", owner.name)
    if any(job.id == job_id for job in core.jobs()):
        raise CommandError("Job ID '%s' already in use" % job_id)


def start_mirror(core, owner, source, target, args, whole_disk):
    """Build the job under the source's lock, hook it into the guest path, start it."""
    table = core.devices
    granularity = args.get("granularity") or _default_granularity(target)
    # Drained, as QEMU's mirror start: a guest request in flight picked the bare top
    # (no notifier) and must land before the initial bitmap is taken.
    with owner.io_lock, source.lock:
        job = MirrorJob(
            args.get("job-id", owner.name), core.events, source, target,
            sync=args["sync"], granularity=granularity,
            buf_size=args.get("buf-size") or DEFAULT_BUF_SIZE,
            copy_mode=args.get("copy-mode", "background"),
            on_source_error=args.get("on-source-error", "report"),
            on_target_error=args.get("on-target-error", "report"),
            whole_disk=whole_disk or source.format_name == "raw",
            drain=lambda section: _drained(table, owner, section),
            pivot=lambda finished: _pivot(table, owner, finished),
            on_finished=lambda finished: _finished(table, owner, finished),
            speed=args.get("speed", 0), auto_finalize=args.get("auto-finalize", True),
            auto_dismiss=args.get("auto-dismiss", True))
        owner.write_notifiers.append(job.guest_write)
    table.block([source, target], "mirror")
    try:
        core.jobs_registry.add(job)
    except Exception:
        _finished(table, owner, job)
        raise
    job.start()


def _default_granularity(target):
    """QEMU's bdrv_get_default_bitmap_granularity: the target's cluster, at least 4 KiB."""
    cluster = getattr(target, "cluster_size", 65536) if target.format_name == "qcow2" else 65536
    return min(max(cluster, 4096), MAX_GRANULARITY)


def _drained(table, owner, section):
    with table.graph_lock, owner.io_lock:
        return section()


def _pivot(table, owner, job):
    """The switch, drained: flush the old top, point the device at the target."""
    old = owner.top
    if not old.read_only:
        old.flush()
    if job.guest_write in owner.write_notifiers:
        owner.write_notifiers.remove(job.guest_write)
    table.switch_top(owner, job.target)
    table.release_job_node(job.target)
    table.name_chain(job.target)
    if job.target.backing is old:
        old.set_read_only(True)     # sync=none: the old top is now a backing file


def _finished(table, owner, job):
    """Unhook the job, release the nodes, close every image no chain uses any more."""
    if job.guest_write in owner.write_notifiers:
        owner.write_notifiers.remove(job.guest_write)
    with table.graph_lock:
        table.unblock([job.source, job.target])
        if not job.pivoted:
            table.release_job_node(job.target)
        table.close_unused([job.source, job.target])
