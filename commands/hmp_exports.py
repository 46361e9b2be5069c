"""HMP adapters for the NBD server and exports, and the ``info blockstats`` /
``info block-exports`` renderings (QEMU's block-hmp-cmds.c ``hmp_nbd_server_*`` and
``hmp_info_blockstats``).  ``commands.hmp`` imports the ``hmp_*`` adapters: the
table finds an entry's adapter there by QEMU's name."""
from .errors import CommandError


def socket_parse(uri: str) -> dict:
    """QEMU's socket_parse for ``unix:PATH`` and ``host:port`` (``[v6]:port``), as the
    legacy QMP address nbd-server-start takes."""
    if uri.startswith("unix:"):
        return {"type": "unix", "data": {"path": uri[len("unix:"):]}}
    if uri.startswith("["):
        host, sep, port = uri[1:].partition("]:")
    else:
        host, sep, port = uri.rpartition(":")
    if not sep or not port:
        raise CommandError("error parsing address '%s'" % uri)
    return {"type": "inet", "data": {"host": host, "port": port}}


def hmp_nbd_server_start(hmp, args):
    if args.get("writable") and not args.get("all"):
        raise CommandError("-w only valid together with -a")
    hmp.core.execute("nbd-server-start", {"addr": socket_parse(args["uri"])})
    if args.get("all"):
        try:
            for device in hmp.core.execute("query-block", {}):
                hmp.core.execute("nbd-server-add", {"device": device["device"],
                                                    "writable": bool(args.get("writable"))})
        except CommandError:
            hmp.core.execute("nbd-server-stop", {})      # QEMU stops the server again
            raise
    return ""


def hmp_nbd_server_add(hmp, args):
    qmp = {"device": args["device"], "writable": bool(args.get("writable"))}
    if "name" in args:
        qmp["name"] = args["name"]
    hmp.core.execute("nbd-server-add", qmp)
    return ""


def hmp_nbd_server_remove(hmp, args):
    hmp.core.execute("nbd-server-remove", {"name": args["name"],
                                           "mode": "hard" if args.get("force") else "safe"})
    return ""


def hmp_nbd_server_stop(hmp, args):
    hmp.core.execute("nbd-server-stop", {})
    return ""


_BLOCKSTATS_KEYS = ("rd_bytes", "wr_bytes", "rd_operations", "wr_operations",
                    "flush_operations", "wr_total_time_ns", "rd_total_time_ns",
                    "flush_total_time_ns", "rd_merged", "wr_merged", "idle_time_ns")


def format_blockstats(entries) -> str:
    """One line per device, QEMU's keys in QEMU's order (idle_time_ns 0 before any I/O)."""
    lines = []
    for entry in entries:
        if not entry.get("device"):
            continue
        stats = entry["stats"]
        lines.append("%s: %s\n" % (entry["device"], " ".join(
            "%s=%d" % (key, stats.get(key, 0)) for key in _BLOCKSTATS_KEYS)))
    return "".join(lines)


def format_block_exports(details) -> str:
    """``info block-exports`` (blockmon): the server, then each export and its clients."""
    if details["server"] is None:
        return "NBD server not running\n"
    lines = ["NBD server listening on %s\n" % details["server"]]
    for export in details["exports"]:
        where = "device %s" % export["device"] if export["device"] else "node"
        lines.append("%s: nbd name '%s', %s (node %s), %s, %d client%s\n" % (
            export["id"], export["name"], where, export["node-name"],
            "writable" if export["writable"] else "read-only", len(export["clients"]),
            "" if len(export["clients"]) == 1 else "s"))
        lines.extend("    client %s\n" % peer for peer in export["clients"])
    if not details["exports"]:
        lines.append("No exports\n")
    return "".join(lines)


def hmp_info_blockstats(hmp, args):
    return format_blockstats(hmp.core.execute("query-blockstats", {}))


def hmp_info_block_exports(hmp, args):
    return format_block_exports(hmp.core.execute("x-blockmon-query-exports", {}))
