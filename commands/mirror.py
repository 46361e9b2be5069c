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

from .block_jobs import JobKind, JobPlan, start_block_job
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
    return start_block_job(core, args, JobKind("mirror", plan=_drive_plan(core),
                                               early_check=_drive_options))


def blockdev_mirror(core, args):
    return start_block_job(core, args, JobKind("mirror", plan=_blockdev_plan(core),
                                               early_check=check_job_options))


def _drive_options(args):
    check_job_options(args, drive=True)


def _drive_plan(core):
    """drive-mirror: the target is checked after the busy check, made in ``create``."""
    def plan(table, source, device, args):
        owner, chosen = _root_device(table, source), {}

        def late_check():
            sync, fmt, base = plan_target(table, source, args)
            _check_new_node_name(table, args.get("node-name"))
            existing = args.get("mode", "absolute-paths") == "existing"
            if existing and not os.path.exists(args["target"]):
                raise CommandError("Could not open '%s': No such file or directory"
                                   % args["target"])
            _check_job_id_free(core, args, owner)
            chosen.update(sync=sync, fmt=fmt, base=base, existing=existing)

        def create(job_id, events, on_finished, **common):
            target = _make_target(table, source, args, chosen)
            table.add_job_node(target, args.get("node-name"))
            return mirror_job(table, owner, source, target, job_id, events, on_finished,
                              dict(args, sync=chosen["sync"]), common, whole_disk=False)

        return JobPlan(held=[source], create=create, late_check=late_check,
                       cleanup=lambda job: _finished(table, owner, job))
    return plan


def _make_target(table, source, args, chosen):
    """Create (unless existing) and open the target; a file we created goes on failure."""
    path, existing = args["target"], chosen["existing"]
    created = None if existing else create_target(table, source, path, chosen["fmt"],
                                                  chosen["base"])
    fmt = None if existing and "format" not in args else chosen["fmt"]
    try:
        return open_target(table, source, path, fmt, chosen["base"], existing)
    except BaseException:
        if created:
            os.unlink(created)
        raise


def _blockdev_plan(core):
    """blockdev-mirror: the target is a node of the graph, held busy with the source."""
    def plan(table, source, device, args):
        owner = _root_device(table, source)
        target = table.lookup(args["target"], args["target"])
        if target in chain_of(source) or table.device_of(target) is not None:
            raise CommandError("Node '%s' is busy: block device is in use" % args["target"])
        sync = "full" if args["sync"] == "top" and source.backing is None else args["sync"]

        def create(job_id, events, on_finished, **common):
            return mirror_job(table, owner, source, target, job_id, events, on_finished,
                              dict(args, sync=sync), common, whole_disk=sync == "full")

        return JobPlan(held=[source, target], create=create,
                       late_check=lambda: _check_job_id_free(core, args, owner),
                       cleanup=lambda job: _finished(table, owner, job))
    return plan


def _root_device(table, source):
    owner = table.device_of(source)
    if owner is None:
        raise CommandError("Need a root block node")
    return owner


def _check_job_id_free(core, args, owner):
    # The registry checks it too, but only after the target file was made.
    job_id = args.get("job-id", owner.name)
    if any(job.id == job_id for job in core.jobs()):
        raise CommandError("Job ID '%s' already in use" % job_id)


def mirror_job(table, owner, source, target, job_id, events, on_finished, args, common,
               whole_disk):
    """The job, built drained (as QEMU's mirror start: a guest request in flight picked
    the bare top, without notifier, and must land before the initial bitmap is taken),
    with its notifier on the device's guest path."""
    common = dict(common, on_source_error=args.get("on-source-error", "report"))
    common.pop("on_error", None)
    with owner.io_lock, source.lock:
        job = MirrorJob(
            job_id, events, source, target, sync=args["sync"],
            granularity=args.get("granularity") or _default_granularity(target),
            buf_size=args.get("buf-size") or DEFAULT_BUF_SIZE,
            copy_mode=args.get("copy-mode", "background"),
            on_target_error=args.get("on-target-error", "report"),
            whole_disk=whole_disk or source.format_name == "raw",
            drain=lambda section: _drained(table, owner, section),
            pivot=lambda finished: _pivot(table, owner, finished),
            detach=lambda finished: _drained(table, owner, lambda: _unhook(owner, finished)),
            on_finished=on_finished,
            **common)
        source.after_guest_write.append(job.guest_write)
    return job


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
    _unhook(owner, job)
    table.switch_top(owner, job.target)
    table.release_job_node(job.target)
    table.name_chain(job.target)
    if job.target.backing is old:
        old.set_read_only(True)     # sync=none: the old top is now a backing file


def _unhook(owner, job):
    if job.guest_write in job.source.after_guest_write:
        job.source.after_guest_write.remove(job.guest_write)


def _finished(table, owner, job):
    """After the blockers went: close every image no chain uses any more."""
    _unhook(owner, job)     # a job that never ran was never detached
    with table.graph_lock:
        if not job.pivoted:
            table.release_job_node(job.target)
        table.close_unused([job.source, job.target])
