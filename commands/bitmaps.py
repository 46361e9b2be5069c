"""Dirty bitmap commands: QMP ``block-dirty-bitmap-*``, the ``dirty-bitmaps`` of
``query-block``, and blockmon's console commands over them.

QMP handlers (``handler(core, arguments)``, named by the command table) follow QEMU
7.2's block/monitor/bitmap-qmp-cmds.c: the same lookups
(``node`` is a device or a node name), the same order of checks and the same texts.
A persistent bitmap on a read-only node is refused (QEMU accepts it and loses it at
quit).  The console commands (``block_dirty_bitmap_add/remove/clear``, ``info
dirty-bitmaps``) are ours: HMP 7.2 has none; their adapters are ``hmp_<name>``, found
through ``commands.hmp``.
"""
from images.chain import chain_of
from images.dirty_bitmap import CHECK_ALLOW_RO, CHECK_DEFAULT, BUSY, READONLY, DirtyBitmap

from .errors import CommandError

UINT32_MAX = (1 << 32) - 1


def dirty_bitmaps_info(image):
    """BlockDirtyInfo of every bitmap of a node, newest first."""
    return [bitmap.info() for bitmap in image.dirty_bitmaps]


def default_granularity(image):
    """bdrv_get_default_bitmap_granularity: the cluster size within [4 KiB, 64 KiB]."""
    if image.format_name == "qcow2":
        return min(65536, max(4096, image.cluster_size))
    return 65536


def _node(core, node):
    try:
        return core.devices.lookup(node, node)
    except CommandError:
        raise CommandError("Node '%s' not found" % node) from None


def lookup(core, node, name):
    """block_dirty_bitmap_lookup: (image, bitmap)."""
    image = _node(core, node)
    return image, image.dirty_bitmaps.get(name)


# -- QMP handlers: handler(core, arguments) ------------------------------------------------
def add(core, args):
    name = args["name"]
    if not name:
        raise CommandError("Bitmap name cannot be empty")
    image = core.devices.lookup(args["node"], args["node"])
    if "granularity" in args:
        granularity = args["granularity"]
        if not 0 <= granularity <= UINT32_MAX:
            raise CommandError("Parameter 'granularity' expects uint32_t")
        if granularity < 512 or granularity & (granularity - 1):
            raise CommandError("Granularity must be power of 2 and at least 512")
    else:
        granularity = default_granularity(image)
    persistent = args.get("persistent", False)
    if persistent:
        _check_can_store(core, image, name, granularity)
    image.dirty_bitmaps.create(name, image.virtual_size, granularity,
                               enabled=not args.get("disabled", False), persistent=persistent)
    return {}


def _check_can_store(core, image, name, granularity):
    where = core.devices.display_name(image)
    if not hasattr(image, "persistent_bitmap_refusal"):
        raise CommandError("Can't store persistent bitmaps to %s: Operation not supported"
                           % where)
    reason = image.persistent_bitmap_refusal(name, granularity)
    if reason:
        raise CommandError("Can't make bitmap '%s' persistent in '%s': %s"
                           % (name, where, reason))


def remove(core, args):
    image, bitmap = lookup(core, args["node"], args["name"])
    bitmap.check(BUSY | READONLY)
    if bitmap.persistent and hasattr(image, "remove_persistent_bitmap"):
        image.remove_persistent_bitmap(bitmap.name)
    image.dirty_bitmaps.release(bitmap)
    return {}


def clear(core, args):
    _image, bitmap = lookup(core, args["node"], args["name"])
    bitmap.check(CHECK_DEFAULT)
    bitmap.clear()
    return {}


def enable(core, args):
    _image, bitmap = lookup(core, args["node"], args["name"])
    bitmap.check(CHECK_ALLOW_RO)
    bitmap.enabled = True
    return {}


def disable(core, args):
    _image, bitmap = lookup(core, args["node"], args["name"])
    bitmap.check(CHECK_ALLOW_RO)
    bitmap.enabled = False
    return {}


def merge(core, args):
    """block_dirty_bitmap_merge: sources into an anonymous bitmap first, so a refused
    source leaves the target unchanged."""
    image, target = lookup(core, args["node"], args["target"])
    merged = DirtyBitmap(None, target.size, target.granularity)
    for index, source in enumerate(args["bitmaps"]):
        bitmap = _merge_source(core, image, source, index)
        bitmap.check(CHECK_ALLOW_RO)
        _check_same_size(target, bitmap)
        merged.merge_from(bitmap)
    target.check(CHECK_DEFAULT)
    target.merge_from(merged)
    return {}


def _merge_source(core, image, source, index):
    if isinstance(source, str):
        bitmap = image.dirty_bitmaps.find(source)
        if bitmap is None:
            raise CommandError("Dirty bitmap '%s' not found" % source)
        return bitmap
    check_bitmap_or_str(source, "bitmaps[%d]" % index)
    return lookup(core, source["node"], source["name"])[1]


def check_bitmap_or_str(source, member):
    """QAPI BlockDirtyBitmapOrStr: a bitmap name, or {node, name} and nothing else."""
    if isinstance(source, str):
        return
    if not isinstance(source, dict):
        raise CommandError("Invalid parameter type for '%s', expected: "
                           "BlockDirtyBitmapOrStr" % member)
    for key in ("node", "name"):
        if key not in source:
            raise CommandError("Parameter '%s.%s' is missing" % (member, key))
        if not isinstance(source[key], str):
            raise CommandError("Invalid parameter type for '%s.%s', expected: string"
                               % (member, key))
    extra = sorted(set(source) - {"node", "name"})
    if extra:
        raise CommandError("Parameter '%s.%s' is unexpected" % (member, extra[0]))


def query(core, args):
    """Ours: every node of every device chain with its bitmaps, top first."""
    out = []
    for device in core.devices.devices():
        for image in chain_of(device.top):
            out.append({"device": device.name, "node-name": image.node_name,
                        "dirty-bitmaps": dirty_bitmaps_info(image)})
    return out


def _check_same_size(target, source):
    if target.size != source.size:
        raise CommandError("Bitmaps are of different sizes (destination size is %d, source "
                           "size is %d) and can't be merged" % (target.size, source.size))


# -- the console (ours) --------------------------------------------------------------
def hmp_block_dirty_bitmap_add(hmp, args):
    qmp = {"node": args["device"], "name": args["name"]}
    for flag, member in (("persistent", "persistent"), ("disabled", "disabled")):
        if args.get(flag):
            qmp[member] = True
    if "granularity" in args:
        qmp["granularity"] = args["granularity"]
    hmp.core.execute("block-dirty-bitmap-add", qmp)
    return ""


def _hmp_verb(qmp_name):
    def adapter(hmp, args):
        hmp.core.execute(qmp_name, {"node": args["device"], "name": args["name"]})
        return ""
    return adapter


hmp_block_dirty_bitmap_remove = _hmp_verb("block-dirty-bitmap-remove")
hmp_block_dirty_bitmap_clear = _hmp_verb("block-dirty-bitmap-clear")


def hmp_info_dirty_bitmaps(hmp, args):
    nodes = hmp.core.execute("x-blockmon-query-dirty-bitmaps", {})
    if "device" in args:
        nodes = [n for n in nodes if args["device"] in (n["device"], n["node-name"])]
    return format_dirty_bitmaps(nodes)


def format_dirty_bitmaps(nodes):
    """``info dirty-bitmaps``: per device, each node that has bitmaps, one line a bitmap."""
    lines, devices = [], []
    for node in nodes:
        if node["device"] not in devices:
            devices.append(node["device"])
    for device in devices:
        mine = [n for n in nodes if n["device"] == device and n["dirty-bitmaps"]]
        if not mine:
            lines.append("%s: no dirty bitmaps\n" % device)
        for node in mine:
            lines.append("%s (%s):\n" % (device, node["node-name"]))
            lines.extend(bitmap_line(info) for info in node["dirty-bitmaps"])
    return "".join(lines)


def bitmap_line(info):
    states = ["recording" if info["recording"] else "disabled"]
    states += [word for word in ("persistent", "busy", "inconsistent") if info.get(word)]
    return "    %s: %d dirty bytes, granularity %d, %s\n" % (
        info["name"], info["count"], info["granularity"], ", ".join(states))
