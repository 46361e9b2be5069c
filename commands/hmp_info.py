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
CELL_CHARS = {"data": "#", "zero": "0", "unallocated": "."}
MIXED = "+"


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
    """One character per cell of the virtual disk: '#' data, '0' zero, '.' unallocated, '+' mixed.

    ``runs`` are ``[kind, offset, length]`` sorted by offset; a cell no run covers
    counts as unallocated.  Disks smaller than ``width`` bytes get one cell per byte.
    """
    width = min(width, virtual_size)
    cells, index = [], 0
    ordered = sorted((r for r in runs if r[2] > 0), key=lambda r: r[1])
    for cell in range(width):
        start, end = cell * virtual_size // width, (cell + 1) * virtual_size // width
        while index < len(ordered) and ordered[index][1] + ordered[index][2] <= start:
            index += 1
        kinds, covered, probe = set(), start, index
        while probe < len(ordered) and ordered[probe][1] < end:
            kind, offset, length = ordered[probe][:3]
            if offset > covered:
                kinds.add("unallocated")
            kinds.add(kind)
            covered = max(covered, offset + length)
            probe += 1
        if covered < end:
            kinds.add("unallocated")
        cells.append(CELL_CHARS.get(kinds.pop(), "?") if len(kinds) == 1 else MIXED)
    return "".join(cells)


def format_blockmap(device: str, layers: Sequence[dict], width: int = STRIP_WIDTH) -> str:
    """The chain ``[A] <- [B] <- [D]`` then one strip per image, top first."""
    names = [layer["node-name"] or "?" for layer in layers]
    lines = ["%s: %s\n" % (device, " <- ".join("[%s]" % n for n in reversed(names)))]
    pad = max(len(n) for n in names) if names else 0
    for name, layer in zip(names, layers):
        strip = allocation_strip(layer["runs"], layer["virtual-size"], width)
        lines.append("  %-*s |%s| %s\n" % (pad, name, strip, layer["filename"]))
    return "".join(lines)


BLOCKMAP_LEGEND = "  legend: '#' data, '0' zero, '.' unallocated (read from below), '+' mixed\n"
