"""``block-stream``: argument checks in QEMU's order, base lookup, op blockers, job start and clean-up."""
import os

from images.chain import chain_of
from images.jobs.stream import StreamJob

from .errors import CommandError


def find_base(top, name, cwd=None):
    """QEMU's bdrv_find_backing_image, and more: the base named by ``name`` below ``top``.

    ``name`` may be a node name, the backing name exactly as an overlay stores it,
    or a path (absolute, relative to the working directory, or relative to the
    top's directory).  Returns None when nothing strictly below the top matches.
    """
    chain = chain_of(top)
    below = chain[1:]
    for image in below:
        if image.node_name == name:
            return image
    for overlay, image in zip(chain, below):
        if overlay.backing_name == name:
            return image
    candidates = {os.path.realpath(os.path.join(cwd or os.getcwd(), name)),
                  os.path.realpath(os.path.join(os.path.dirname(top.path), name))}
    for image in below:
        if os.path.realpath(image.path) in candidates:
            return image
    return None


def intermediate_images(top, base):
    """The top and every image above ``base`` (the nodes a stream op-blocks)."""
    nodes = []
    for image in chain_of(top):
        if image is base:
            break
        nodes.append(image)
    return nodes


def resolve_stream_base(table, top, device, args):
    base, base_node = args.get("base"), args.get("base-node")
    if base is not None:
        found = find_base(top, base)
        if found is None:
            raise CommandError("Can't find '%s' in the backing chain" % base)
        return found
    if base_node is not None:
        found = table.lookup(None, base_node)
        if found is top or found not in chain_of(top):
            raise CommandError("Node '%s' is not a backing image of '%s'" % (base_node, device))
        return found
    return None


def start_stream(core, args):
    with core.devices.graph_lock:
        return _start_stream(core, args)


def _start_stream(core, args):
    if core.closing:
        raise CommandError("Cannot start a block job: blockmon is shutting down")
    table = core.devices
    device = args["device"]
    if "base" in args and "base-node" in args:     # QEMU checks this before the lookup
        raise CommandError("'base' and 'base-node' cannot be specified at the same time")
    on_error = args.get("on-error", "report")
    top = table.lookup(device, device)
    base = resolve_stream_base(table, top, device, args)
    held = intermediate_images(top, base)
    for image in held:
        table.check_not_busy(image)
    if base is None and "backing-file" in args:
        raise CommandError("backing file specified, but streaming the entire chain")
    job_id = args.get("job-id")
    if job_id is None:
        owner = table.device_of(top)
        job_id = owner.name if owner is not None else ""
    job = StreamJob(
        job_id, core.events, top, base,
        backing_file=args.get("backing-file"),
        on_finished=lambda finished: _stream_finished(table, finished, held),
        speed=args.get("speed", 0), on_error=on_error,
        auto_finalize=args.get("auto-finalize", True),
        auto_dismiss=args.get("auto-dismiss", True),
    )
    table.block(held, "stream")
    try:
        # QEMU's job_create order: id checks, 'created', then the speed check ('null' if it fails)
        core.jobs_registry.add(job)
    except Exception:
        table.unblock(held)
        raise
    job.start()
    return {}


def _stream_finished(table, job, held):
    """The job's clean-up: release the blockers; if the top now backs onto the base,
    close the streamed-out images no chain reaches and forget their node names."""
    table.unblock(held)
    if job.top.backing is job.base and job.status != "aborting":
        live = {id(img) for img in table.all_images()}
        for image in held[1:]:
            if id(image) not in live:
                image.close()
        table.forget_unused_nodes()
