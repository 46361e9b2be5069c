"""Text renderings of QMP results for HMP: ``info *`` and ``help``, in QEMU 7.2's layout.

Pure functions from JSON-able values to text with ``\\n`` line ends (the servers
turn them into CRLF).  Sources: block/monitor/block-hmp-cmds.c (``print_block_info``,
``hmp_info_block_jobs``), block/qapi.c (``bdrv_image_info_dump``), monitor/hmp.c
(``help_cmd_dump_one``), util/cutils.c (``size_to_str``).
"""
import math
from typing import Iterable, List, Optional, Sequence

from .table import HMP_COMMANDS, INFO_COMMANDS, HmpCommand, find_command

STRIP_WIDTH = 64


# -- help ------------------------------------------------------------------------------
def help_line(command: HmpCommand, prefix: str = "") -> str:
    # QEMU prints "%s %s -- %s": an empty params leaves two spaces.
    return "%s%s %s -- %s\n" % (prefix, command.name, command.params, command.help)


def format_help(words: Sequence[str] = ()) -> str:
    """``help [cmd [subcmd]]``: every command, one command, or the ``info`` subcommands."""
    if not words:
        return "".join(help_line(cmd) for cmd in HMP_COMMANDS)
    command = find_command(words[0])
    if command is None:
        return "unknown command: '%s'\n" % words[0]
    if command.sub_table is None:
        return help_line(command)
    if len(words) == 1:
        return format_info_help(words[0])
    sub = find_command(words[1], command.sub_table)
    if sub is None:
        return "unknown command: '%s %s'\n" % (words[0], words[1])
    return help_line(sub, words[0] + " ")


def format_info_help(prefix: str = "info") -> str:
    return "".join(help_line(cmd, prefix + " ") for cmd in INFO_COMMANDS)


# -- info version / block-jobs ---------------------------------------------------------
def format_version(version: dict) -> str:
    """``7.2.0 (blockmon 0.1.0)``: QEMU's numbers, our package in parentheses."""
    qemu = version["qemu"]
    package = version.get("package") or ""
    return "%d.%d.%d%s\n" % (qemu["major"], qemu["minor"], qemu["micro"],
                             " (%s)" % package if package else "")


def format_block_jobs(jobs: Iterable[dict]) -> str:
    lines = []
    for job in jobs:
        numbers = (job["offset"], job["len"], job["speed"])
        if job["type"] == "stream":
            head = "Streaming device %s" % job["device"]
        else:
            head = "Type %s, device %s" % (job["type"], job["device"])
        lines.append("%s: Completed %d of %d bytes, speed limit %d bytes/s\n" % ((head,) + numbers))
    return "".join(lines) or "No active jobs\n"


def format_merge_cost(cost: dict) -> str:
    """``info merge-cost``: what a stream and a commit onto base would each write."""
    def line(command, part):
        total = part["data"] + part["zero"]
        return "  %-34s writes %d bytes (%.1f MiB) into %s, %d of them zeros\n" % (
            command, total, total / 1048576, part["target"], part["zero"])
    device, base = cost["device"], cost["base"]
    return ("Merging %s down to %s (%s stays, the layers above it go):\n" % (device, base, base)
            + line("block_stream %s 0 %s" % (device, base), cost["stream"])
            + line("block_commit %s %s %s" % (device, cost["top"], base), cost["commit"]))


# -- info block ------------------------------------------------------------------------
def format_block(devices: Iterable[dict], verbose: bool = False,
                 device: Optional[str] = None) -> str:
    """``info block [-v] [device]``; the Attached/Removable lines are left out (no hardware).

    Unlike QEMU, a filtered listing never starts with a blank line.
    """
    blocks = [block_entry(info, verbose) for info in devices
              if device is None or info["device"] == device]
    return "\n".join(blocks)


def format_nodes(nodes: Iterable[dict], verbose: bool = False,
                 node: Optional[str] = None) -> str:
    """``info block -n``: every named node, newest first, as a device without the device."""
    blocks = [block_entry({"device": "", "inserted": entry}, verbose) for entry in nodes
              if node is None or entry["node-name"] == node]
    return "\n".join(blocks)


def block_entry(info: dict, verbose: bool) -> str:
    inserted = info.get("inserted")
    name = info["device"] or (inserted or {}).get("node-name") or "<anonymous>"
    if info["device"] and inserted and inserted.get("node-name"):
        name += " (%s)" % inserted["node-name"]
    if inserted is None:
        return "%s: [not inserted]\n" % name
    lines = ["%s: %s (%s%s%s)\n" % (name, inserted["file"], inserted["drv"],
                                    ", read-only" if inserted.get("ro") else "",
                                    ", encrypted" if inserted.get("encrypted") else "")]
    if info.get("io-status", "ok") != "ok":
        lines.append("    I/O status:       %s\n" % info["io-status"])
    cache = inserted.get("cache", {"writeback": True})
    lines.append("    Cache mode:       %s%s%s\n" % (
        "writeback" if cache.get("writeback") else "writethrough",
        ", direct" if cache.get("direct") else "",
        ", ignore flushes" if cache.get("no-flush") else ""))
    if inserted.get("backing_file"):
        lines.append("    Backing file:     %s (chain depth: %d)\n"
                     % (inserted["backing_file"], inserted["backing_file_depth"]))
    if inserted.get("detect_zeroes", "off") != "off":
        lines.append("    Detect zeroes:    %s\n" % inserted["detect_zeroes"])
    if verbose and inserted.get("image"):
        lines.append("\nImages:\n")
        image = inserted["image"]
        while image is not None:
            lines.append(image_dump(image))
            image = image.get("backing-image")
    return "".join(lines)


def size_to_str(value: int) -> str:
    """QEMU's size_to_str: ``2 GiB``, ``1.29 GiB``, ``196 KiB``, ``0 B``."""
    _mantissa, exponent = math.frexp(value / (1000.0 / 1024.0))
    index = int((exponent - 1) / 10)         # C division truncates toward zero
    return "%0.3g %sB" % (value / (1 << (index * 10)), ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")[index])


def image_dump(image: dict) -> str:
    """bdrv_image_info_dump (7.2): the qemu-img-info lines for one ImageInfo."""
    disk = size_to_str(image["actual-size"]) if "actual-size" in image else "unavailable"
    lines = ["image: %s\n" % image["filename"], "file format: %s\n" % image["format"],
             "virtual size: %s (%d bytes)\n" % (size_to_str(image["virtual-size"]),
                                                image["virtual-size"]),
             "disk size: %s\n" % disk]
    if image.get("encrypted"):
        lines.append("encrypted: yes\n")
    if "cluster-size" in image:
        lines.append("cluster_size: %d\n" % image["cluster-size"])
    if image.get("dirty-flag"):
        lines.append("cleanly shut down: no\n")
    if image.get("backing-filename"):
        lines.append("backing file: %s" % image["backing-filename"])
        full = image.get("full-backing-filename")
        if full is None:
            lines.append(" (cannot determine actual path)")
        elif full != image["backing-filename"]:
            lines.append(" (actual path: %s)" % full)
        lines.append("\n")
        if image.get("backing-filename-format"):
            lines.append("backing file format: %s\n" % image["backing-filename-format"])
    specific = image.get("format-specific")
    if specific:
        lines.append("Format specific information:\n")
        lines.extend(_dump_value(specific.get("data", {}), 1))
    return "".join(lines)


def _dump_value(value, indent: int) -> List[str]:
    """QEMU's dump_qdict/dump_qlist: keys with '-' shown as ' ', nesting by 4 spaces."""
    pad, lines = "    " * indent, []
    items = value.items() if isinstance(value, dict) else (("[%d]" % i, v) for i, v in enumerate(value))
    for key, item in items:
        label = key.replace("-", " ")
        if isinstance(item, (dict, list)):
            lines.append("%s%s:\n" % (pad, label))
            lines.extend(_dump_value(item, indent + 1))
        else:
            text = ("true" if item else "false") if isinstance(item, bool) else item
            lines.append("%s%s: %s\n" % (pad, label, text))
    return lines


# -- info blockmap (ours) ----------------------------------------------------------------
def allocation_strip(runs: Sequence[Sequence], virtual_size: int, width: int = STRIP_WIDTH) -> str:
    """One character per cell of the virtual disk, by the share of the cell this image
    allocates (what a stream copies from it), on a halving scale so that 25% and 2% look
    different: '█' all, '▇' half or more, '▆' a quarter or more, ... '▂' 1/64 or more,
    '▁' less; '0' a cell of zero clusters only, '.' nothing (read from below).

    ``runs`` are ``[kind, offset, length]``; bytes no run covers are unallocated.  Disks
    smaller than ``width`` bytes get one cell per byte.
    """
    width = min(width, virtual_size)
    allocated, data = [0] * width, [0] * width
    for kind, offset, length in (r[:3] for r in runs):
        if kind == "unallocated" or length <= 0:
            continue
        first, last = offset * width // virtual_size, (offset + length - 1) * width // virtual_size
        for cell in range(first, min(last, width - 1) + 1):
            start, end = cell * virtual_size // width, (cell + 1) * virtual_size // width
            inside = min(end, offset + length) - max(start, offset)
            allocated[cell] += inside
            data[cell] += inside if kind == "data" else 0
    cells = []
    for cell in range(width):
        size = (cell + 1) * virtual_size // width - cell * virtual_size // width
        cells.append(_cell_char(allocated[cell], data[cell], size))
    return "".join(cells)


SHADES = "▁▂▃▄▅▆▇█"         # index k: a share of at least 2**(k-7) of the cell


def _cell_char(allocated: int, data: int, size: int) -> str:
    if allocated == 0:
        return "."
    if allocated >= size and data == 0:
        return "0"
    share, level = allocated / size, len(SHADES) - 1
    while level > 0 and share < 2.0 ** (level - len(SHADES) + 1):
        level -= 1
    return SHADES[level]


def format_blockmap(device: str, layers: Sequence[dict], width: int = STRIP_WIDTH) -> str:
    """The chain ``[A] <- [B] <- [D]`` then one strip per image, top first."""
    names = [layer["node-name"] or "?" for layer in layers]
    lines = ["%s: %s\n" % (device, " <- ".join("[%s]" % n for n in reversed(names)))]
    pad = max(len(n) for n in names) if names else 0
    for name, layer in zip(names, layers):
        strip = allocation_strip(layer["runs"], layer["virtual-size"], width)
        lines.append("  %-*s |%s| %s\n" % (pad, name, strip, layer["filename"]))
    return "".join(lines)


BLOCKMAP_LEGEND = ("  legend: the share of each cell an image holds, what a stream copies from it:\n"
                   "    '█' all  '▇' 1/2+  '▆' 1/4+  '▅' 1/8+  '▄' 1/16+  '▃' 1/32+  '▂' 1/64+  "
                   "'▁' less  '0' zero clusters only  '.' none (read from below)\n")
