"""``blockdev-snapshot-sync``: put a new overlay on top of a live device.

Every check runs before anything is created, so a refused snapshot changes
nothing.  The switch happens under the device's I/O lock and the old top's lock:
a guest write either finished in the old top before the switch or goes to the
new overlay after it.
If opening the overlay we just created fails, the file is removed again.
A target file that another process holds (QEMU's lock bytes) is refused before a
byte of it changes, with QEMU's lock error; the new overlay is then locked as the
active image, the old top as a backing file.
A relative file name is opened by its absolute path (relative to the working
directory), so ``info block`` and ``query-block`` show an absolute name like every
other image of the chain (QEMU shows what was typed); error messages name the
file as typed.
"""
import os

from images.driver import FORMATS
from images.jobs.states import id_wellformed
from images.qcow2 import Qcow2Image, create_qcow2

from .errors import CommandError



def _image_in_file(table, path):
    """The image of some device's chain that is stored in ``path``, or None."""
    real = os.path.realpath(path)
    for image in table.all_images():
        if os.path.realpath(image.path) == real:
            return image
    return None


def _check_not_live(table, top, path):
    """Never truncate an image that any device is using."""
    if os.path.realpath(top.path) == os.path.realpath(path):
        # QEMU's own text, "Error: " included (HMP then prints it twice, as QEMU does)
        raise CommandError("Error: Trying to create an image with the same filename as the backing file")
    image = _image_in_file(table, path)
    if image is not None:
        raise CommandError("Could not create '%s': it is image '%s' of a device's backing chain"
                           % (path, image.node_name))


def _create_overlay(path, top):
    full = os.path.abspath(path)
    try:
        # The create's own error is the one to report, as QEMU does: ENOENT, ENOTDIR
        # (a path under a regular file), EACCES, EROFS, EISDIR...  No O_TRUNC: the
        # file may be another process's image, and create_qcow2 truncates it only
        # once it holds QEMU's create lock (nothing written when it cannot).
        os.close(os.open(full, os.O_WRONLY | os.O_CREAT, 0o644))
        create_qcow2(full, top.virtual_size, backing_name=top.path,
                     backing_format=top.format_name, filename=path)
    except OSError as err:
        raise CommandError("Could not create '%s': %s" % (path, err.strerror)) from err


def _open_existing(path):
    try:
        return Qcow2Image.open(os.path.abspath(path), filename=path)
    except FileNotFoundError as err:
        raise CommandError("Could not open '%s': No such file or directory" % path) from err
    except OSError as err:
        raise CommandError("Could not open '%s': %s" % (path, err.strerror)) from err


def _snapshot_target(table, args):
    """The device and its active image to put the overlay on, after QEMU's checks."""
    device, node_name = args.get("device"), args.get("node-name")
    new_node = args.get("snapshot-node-name")
    top = table.lookup(device, node_name)
    table.check_not_busy(top)
    if node_name is not None and new_node is None:
        raise CommandError("New overlay node-name missing")
    if new_node is not None and not id_wellformed(new_node):
        # QEMU finds this only when opening the overlay it already created; we look first
        raise CommandError("Invalid node-name: '%s'" % new_node)
    if new_node is not None and (table.node(new_node) is not None or table.device(new_node) is not None):
        raise CommandError("New overlay node-name already in use")
    owner = table.device_of(top)
    if owner is None:
        raise CommandError("Cannot snapshot node '%s': it is not the active image of a device" % top.node_name)
    fmt = args.get("format", "qcow2")
    if fmt not in FORMATS:
        raise CommandError("Unknown file format '%s'" % fmt)
    return owner, top


def _make_overlay(table, top, path, fmt, mode):
    """Create (or, in mode 'existing', open) the overlay file; nothing is left behind on failure."""
    # _snapshot_target has refused unknown formats; raw cannot have a backing image.
    if mode == "existing":
        if _image_in_file(table, path) is not None:
            raise CommandError("The overlay is already in use")
        if fmt == "raw":
            raise CommandError("The overlay does not support backing images")
        return _open_existing(path)
    if fmt == "raw":
        raise CommandError("Backing file not supported for file format 'raw'")
    _check_not_live(table, top, path)
    _create_overlay(path, top)
    try:
        return Qcow2Image.open(os.path.abspath(path), filename=path)
    except Exception:
        os.unlink(os.path.abspath(path))
        raise


def snapshot_sync(core, args):
    table = core.devices
    path = args["snapshot-file"]
    with table.graph_lock:
        owner, top = _snapshot_target(table, args)
        with owner.io_lock, top.lock:
            overlay = _make_overlay(table, top, path, args.get("format", "qcow2"),
                                    args.get("mode", "absolute-paths"))
            if not top.read_only:
                top.flush()
            overlay.backing = top
            table.switch_top(owner, overlay)
            table.name_chain(overlay, args.get("snapshot-node-name"))
            top.set_read_only(True)
    return {}
