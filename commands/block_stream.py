"""``block-stream``: its own argument checks, the base lookup and its clean-up; the
start/finish path every job shares is ``commands.block_jobs``."""
import os

from images.chain import chain_of
from images.jobs.stream import StreamJob

from .block_jobs import JobKind, JobPlan, start_block_job
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


def _check_base_arguments(args):
    if "base" in args and "base-node" in args:     # QEMU checks this before the lookup
        raise CommandError("'base' and 'base-node' cannot be specified at the same time")


def _plan_stream(table, top, device, args):
    base = resolve_stream_base(table, top, device, args)
    held = intermediate_images(top, base)

    def late_check():
        if base is None and "backing-file" in args:
            raise CommandError("backing file specified, but streaming the entire chain")

    def create(job_id, events, on_finished, **common):
        return StreamJob(job_id, events, top, base, backing_file=args.get("backing-file"),
                         on_finished=on_finished, **common)
    return JobPlan(held=held, create=create, late_check=late_check,
                   cleanup=lambda job: _stream_finished(table, job, held))


STREAM = JobKind("stream", plan=_plan_stream, early_check=_check_base_arguments)


def start_stream(core, args):
    return start_block_job(core, args, STREAM)


def _stream_finished(table, job, held):
    """The stream's own clean-up (the blockers are already released): if the top now
    backs onto the base, close the streamed-out images no chain reaches and forget
    their node names."""
    if job.top.backing is job.base and job.status != "aborting":
        live = {id(img) for img in table.all_images()}
        for image in held[1:]:
            if id(image) not in live:
                image.close()
        table.forget_unused_nodes()
