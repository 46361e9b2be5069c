"""``block-commit`` and HMP ``commit``: argument checks in QEMU's order (qmp_block_commit),
the lookup of top and base, and the start through ``commands.block_jobs``.

An active commit (top is the active image) gets the mirror's hooks from here: the
guest's writes reach the job through the top's ``after_guest_write`` notifiers,
``drain`` (no guest request and no graph change while the job finishes in sync),
``pivot`` (the device now uses base; the layers above it leave the chain and are
closed) and ``detach`` (off the guest path when the body ends).

Refusals are QEMU 7.2's texts (reference section 2.5), but a busy device says what
keeps it busy (QEMU answers ``Need a root block node``).  The job holds every image
from the device's active image down to base: guest I/O goes on, other jobs and
snapshots wait.
"""
import os

from images.chain import chain_of
from images.errors import BlockError
from images.jobs.commit import ActiveCommitJob, CommitJob, commit_to_backing
from images.jobs.commit import merge_cost as chain_merge_cost

from .block_jobs import JobKind, JobPlan, start_block_job
from .block_stream import find_base
from .errors import DEVICE_NOT_FOUND, BareError, CommandError


def root_image(table, device):
    """QEMU's qmp_get_root_bs as qmp_block_commit uses it: a device (or the node name of
    a device's active image); another node is not a root."""
    dev = table.device(device)
    if dev is not None:
        return dev.top
    node = table.node(device)
    if node is None:
        raise CommandError("Device '%s' not found" % device, DEVICE_NOT_FOUND)
    if table.device_of(node) is None:
        raise CommandError("Need a root block node")
    return node


def _names_image(image, name):
    """True when ``name`` is the image's file name as QEMU compares it (bs->filename),
    its real path, or its node name."""
    return name in (image.path, image.node_name) or \
        os.path.realpath(name) == os.path.realpath(image.path)


def resolve_top(table, active, args):
    if "top-node" in args and "top" in args:
        raise CommandError("'top-node' and 'top' are mutually exclusive")
    if "top-node" in args:
        top = table.lookup(None, args["top-node"])
        if top not in chain_of(active):
            raise CommandError("'%s' is not in this backing file chain" % args["top-node"])
        return top
    name = args.get("top")
    if name is None or _names_image(active, name):
        return active
    top = find_base(active, name)
    if top is None:
        raise CommandError("Top image file %s not found" % name)
    return top


def resolve_base(table, top, args):
    if "base-node" in args and "base" in args:
        raise CommandError("'base-node' and 'base' are mutually exclusive")
    if "base-node" in args:
        base = table.lookup(None, args["base-node"])
        if base not in chain_of(top):
            raise CommandError("'%s' is not in this backing file chain" % args["base-node"])
        return base
    if "base" in args:
        base = find_base(top, args["base"])
        if base is None:
            raise CommandError("Can't find '%s' in the backing chain" % args["base"])
        return base
    return chain_of(top)[-1]      # QEMU's bdrv_find_base: the bottom of the chain


def _plan_commit(table, active, device, args, made):
    top = resolve_top(table, active, args)
    base = resolve_base(table, top, args)
    chain = chain_of(active)
    held = chain[:chain.index(base) + 1]     # the active image down to base

    def late_check():
        if top is base:
            raise CommandError("cannot commit an image into itself")
        if top is active:
            if "backing-file" in args:
                raise CommandError("'backing-file' specified, but 'top' is the active layer")

    def create(job_id, events, on_finished, **common):
        if top is active:
            job = _active_commit(table, table.device_of(active), base, job_id, events,
                                 on_finished, common)
        else:
            job = CommitJob(job_id, events, top, base, chain[chain.index(top) - 1],
                            backing_file=args.get("backing-file"), on_finished=on_finished,
                            **common)
        made.append(job)
        return job
    return JobPlan(held=held, create=create, late_check=late_check,
                   cleanup=lambda job: _commit_finished(table, job, held))


def _active_commit(table, owner, base, job_id, events, on_finished, common):
    """The active commit, built drained (a guest request in flight lands before the
    initial bitmap is taken) and hooked into the top's guest path."""
    on_error = common.pop("on_error")
    top = owner.top
    with owner.io_lock, top.lock:
        job = ActiveCommitJob(
            job_id, events, top, base, granularity=max(base.cluster_size, 4096),
            on_source_error=on_error, on_target_error=on_error,
            drain=lambda section: _drained(table, owner, section),
            pivot=lambda finished: _pivot(table, owner, finished),
            detach=lambda finished: _drained(table, owner, lambda: _unhook(finished)),
            on_finished=on_finished, **common)
        top.after_guest_write.append(job.guest_write)
    return job


def _drained(table, owner, section):
    with table.graph_lock, owner.io_lock:
        return section()


def _pivot(table, owner, job):
    """block_job_complete, drained: the device now uses base (flushed by the job)."""
    job.top.flush()
    _unhook(job)
    table.switch_top(owner, job.base)


def _unhook(job):
    if job.guest_write in job.top.after_guest_write:
        job.top.after_guest_write.remove(job.guest_write)


def start_commit(core, args):
    table = core.devices
    # QEMU looks the device up and checks it is not busy before anything else.
    table.check_not_busy(root_image(table, args["device"]))
    made = []
    kind = JobKind("commit", plan=lambda t, top, device, a: _plan_commit(t, top, device, a, made))
    try:
        return start_block_job(core, args, kind)
    except Exception:
        for job in made:        # refused once built (id, speed, base reopen): unhook it
            if isinstance(job, ActiveCommitJob):
                _unhook(job)
        raise


def _commit_finished(table, job, held):
    """Close the images that left the chain (no chain reaches them any more) and forget
    their node names; their files stay on disk, as QEMU leaves them."""
    if isinstance(job, ActiveCommitJob):
        _unhook(job)        # a job that never ran was never detached
    live = {id(img) for img in table.all_images()}
    for image in held:
        if id(image) not in live:
            image.close()
    table.forget_unused_nodes()


def commit_device(core, args):
    """HMP ``commit device|all`` (``x-blockmon-commit``): each active image's data into
    its backing file, synchronously; QEMU's texts, printed without 'Error: ' (hmp_commit)."""
    table, name = core.devices, args["device"]
    if name == "all":
        devices = [dev for dev in table.devices() if dev.top.backing is not None]
    else:
        dev = table.device(name)
        if dev is None:
            raise BareError("Device '%s' not found\n" % name, DEVICE_NOT_FOUND)
        devices = [dev]
    for dev in devices:
        with table.graph_lock:
            if dev.top.backing is None:
                raise BareError("'commit' error for '%s': Operation not supported\n" % name)
            if any(table.is_busy(image) for image in chain_of(dev.top)):
                raise BareError("'commit' error for '%s': Device or resource busy\n" % name)
            try:
                with dev.io_lock:
                    commit_to_backing(dev.top)
            except BlockError as err:
                raise BareError("'commit' error for '%s': %s\n" % (name, err.desc)) from err


def merge_cost(core, args):
    """``x-blockmon-merge-cost``: the bytes a stream and a commit onto base would write."""
    table = core.devices
    top = root_image(table, args["device"])
    base = resolve_base(table, top, {"base": args["base"]} if "base" in args else {})
    if base is top:
        raise CommandError("'%s' has no backing file" % args["device"])
    cost = chain_merge_cost(top, base)
    return {"device": args["device"], "top": top.node_name, "base": base.node_name,
            "stream": {"target": top.node_name, "data": cost["stream"][0],
                       "zero": cost["stream"][1]},
            "commit": {"target": base.node_name, "data": cost["commit"][0],
                       "zero": cost["commit"][1]}}
