"""The node graph as QEMU 7.2's QMP speaks it: ``blockdev-add``, ``blockdev-del``,
``query-named-block-nodes``.

``blockdev-add`` opens a format node (qcow2, raw) on a file given inline
(``file: {driver: file, filename}``) or by a file node's name, or a ``driver:
file`` node alone.  ``backing``: a node name (linked as is), null (no backing
file), or absent (the chain named in the image header is opened read-only).  The
monitor owns such nodes until ``blockdev-del``, which refuses nodes a device, a
job or another node uses.  blockmon has no protocol layer of its own: a file node
is a name for a path, listed with ``drv: file``; a format node opened on an inline
file dict gets no separate file node.
"""
import os
import threading

from images.chain import chain_of, open_image, probe_format, resolve_backing_path
from images.errors import BlockError
from images.jobs.states import id_wellformed
from images.qcow2 import Qcow2Image
from images.raw import RawImage

from . import block_info
from .errors import CommandError

DRIVERS = ("qcow2", "raw", "file")
CACHE = {"writeback": True, "direct": False, "no-flush": False}


class FileNode:
    """A ``driver: file`` node: a named, open-able path (no I/O of its own here)."""

    format_name = "file"
    backing = None
    backing_name = None

    def __init__(self, path, read_only):
        self.path = path
        self.read_only = read_only
        self.node_name = None
        self.lock = threading.RLock()
        self.virtual_size = os.path.getsize(path)

    def flush(self):
        """Nothing buffered: the format node on top does its own I/O."""

    def close(self):
        """Nothing held open."""


def _check_name(table, args):
    name = args.get("node-name")
    if name is None:
        raise CommandError("'node-name' must be specified for the root node")
    if not id_wellformed(name):
        raise CommandError("Invalid node-name: '%s'" % name)
    if table.node(name) is not None or table.device(name) is not None:
        raise CommandError("Duplicate nodes with node-name='%s'" % name)
    return name


def _file_path(table, spec):
    """The path of the ``file`` member: an inline {driver: file, filename} or a node name."""
    if isinstance(spec, str):
        node = table.owned_node(spec)
        if not isinstance(node, FileNode):
            raise CommandError("Cannot find device='' nor node-name='%s'" % spec)
        return node.path
    if not isinstance(spec, dict):
        raise CommandError("Parameter 'file' is missing")
    if spec.get("driver") != "file":
        raise CommandError("Parameter 'driver' does not accept value '%s'" % spec.get("driver"))
    if not isinstance(spec.get("filename"), str):
        raise CommandError("Parameter 'filename' is missing")
    return spec["filename"]


def _refuse_open_file(table, path, writable):
    real = os.path.realpath(path)
    for image in table.all_images():
        if isinstance(image, FileNode):
            continue    # a file node is a name for the path, not an open image
        if os.path.realpath(image.path) == real and (writable or not image.read_only):
            raise CommandError("Could not open '%s': it is image '%s' of an open chain"
                               % (path, image.node_name))


def _open_format_node(table, args, path, read_only):
    driver = args["driver"]
    if not os.path.exists(path):
        raise CommandError("Could not open '%s': No such file or directory" % path)
    if driver == "qcow2" and probe_format(path) != "qcow2":
        raise CommandError("Image is not in qcow2 format")
    cls = Qcow2Image if driver == "qcow2" else RawImage
    try:
        return cls.open(os.path.abspath(path), read_only=read_only)
    except OSError as err:
        raise CommandError("Could not open '%s': %s" % (path, err.strerror)) from err


def _link_backing(table, image, args):
    backing = args.get("backing", "")
    if backing is None:
        return
    if backing != "":
        # a node given by name is linked whatever the header names (a pull backup's
        # scratch image is made without a backing file and linked to the live disk)
        image.backing = table.lookup(backing, backing)
        return
    if not image.backing_name:
        return
    image.backing = open_image(resolve_backing_path(image), format=image.backing_format or None,
                               read_only=True)


def blockdev_add(core, args):
    table = core.devices
    driver = args["driver"]
    if driver not in DRIVERS:
        raise CommandError("Parameter 'driver' does not accept value '%s'" % driver)
    with table.graph_lock:
        name = _check_name(table, args)
        read_only = bool(args.get("read-only", False))
        if driver == "file":
            if "filename" not in args:
                raise CommandError("Parameter 'filename' is missing")
            path = args["filename"]
            if not os.path.exists(path):
                raise CommandError("Could not open '%s': No such file or directory" % path)
            table.add_owned_node(FileNode(os.path.abspath(path), read_only), name)
            return {}
        if "file" not in args:
            raise CommandError("Parameter 'file' is missing")
        path = _file_path(table, args["file"])
        backing = args.get("backing", "")
        if backing not in ("", None):
            table.lookup(backing, backing)      # an unknown backing node: refuse first
        _refuse_open_file(table, path, not read_only)
        image = _open_format_node(table, args, path, read_only)
        try:
            _link_backing(table, image, args)
        except BlockError:
            image.close()
            raise
        image.file_node = args["file"] if isinstance(args["file"], str) else None
        table.add_owned_node(image, name)
    return {}


def _users(table, image):
    """Why a node cannot go: a device uses it, or another node builds on it."""
    for device in table.devices():
        if image in chain_of(device.top):
            return True
    for other in table.all_images():
        if other is not image and (other.backing is image
                                   or getattr(other, "file_node", None) == image.node_name):
            return True
    return False


def blockdev_del(core, args):
    table = core.devices
    name = args["node-name"]
    with table.graph_lock:
        image = table.node(name)
        if image is None:
            raise CommandError("Failed to find node with node-name='%s'" % name)
        if table.owned_node(name) is None:
            raise CommandError("Node %s is not owned by the monitor" % name)
        table.check_not_busy(image)
        if _users(table, image):
            raise CommandError("Node %s is in use" % name)
        table.remove_owned_node(name)
    return {}


def node_entry(image, flat=False):
    """BlockDeviceInfo of one node (query-named-block-nodes)."""
    if isinstance(image, FileNode):
        return {"file": image.path, "node-name": image.node_name, "ro": image.read_only,
                "drv": "file", "backing_file_depth": 0, "encrypted": False,
                "detect_zeroes": "off", "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0,
                "iops_rd": 0, "iops_wr": 0, "write_threshold": 0, "cache": dict(CACHE)}
    entry = block_info.inserted_info(image)
    if flat:
        entry["image"].pop("backing-image", None)
    return entry


def query_named_block_nodes(core, args):
    table = core.devices
    with table.graph_lock:
        names = table.node_names()
        return [node_entry(table.node(name), args.get("flat", False)) for name in reversed(names)]
