"""The one declarative command table: HMP commands, ``info`` subcommands, QMP commands.

Every reader of commands reads this module and nothing else: the HMP parser
(``commands.args``), ``help`` (``commands.hmp_info``), QMP argument checking
(``commands.qmp_args``), ``query-commands``, the console's completer and lexer,
and ``BlockCore.execute``, which runs a QMP command through its entry: one
``QmpCommand`` per command holds its name, its argument schema and its handler.

HMP entries copy QEMU 7.2's ``hmp-commands.hx`` / ``hmp-commands-info.hx``:
``name`` (``|`` separates aliases, as QEMU prints it), ``args_type`` in QEMU's
grammar, ``params`` and ``help`` verbatim.  ``qmp`` names the QMP command the HMP
adapter calls (None for console-only commands); ``ours`` marks blockmon's
extensions, whose help ends with "(blockmon)".  ``complete`` says where the
completer finds candidates for an argument (default: by argument kind).
An entry's HMP adapter is ``commands.hmp.hmp_<name>`` (``hmp_info_<name>`` for an
info subcommand), QEMU's own naming, so no second map is keyed by the name.
``word_fallback`` is our one deliberate parser improvement: an optional size word
that is not a size fills the named string argument instead (``block_stream
virtio0 A``).
"""
import importlib
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from images.jobs.blockjob import ON_ERROR_POLICIES


@dataclass(frozen=True)
class HmpCommand:
    name: str
    args_type: str
    params: str
    help: str
    qmp: Optional[str] = None
    ours: bool = False
    sub_table: Optional[Tuple["HmpCommand", ...]] = None
    complete: Dict[str, str] = field(default_factory=dict)
    word_fallback: Dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> Tuple[str, ...]:
        """The primary name first, then the aliases."""
        return tuple(self.name.split("|"))

    @property
    def primary(self) -> str:
        return self.names[0]


_JOB_DEVICE = {"device": "jobs"}

INFO_COMMANDS: Tuple[HmpCommand, ...] = (
    HmpCommand("version", "", "", "show the version of QEMU", qmp="query-version"),
    HmpCommand("block", "nodes:-n,verbose:-v,device:B?", "[-n] [-v] [device]",
               "show info of one block device or all block devices "
               "(-n: show named nodes; -v: show details)",
               qmp="query-block", complete={"device": "devices"}),
    HmpCommand("block-jobs", "", "", "show progress of ongoing block device operations",
               qmp="query-block-jobs"),
    HmpCommand("blockmap", "device:B?", "[device]",
               "show which image of the backing chain holds each part of the disk, "
               "shaded by how much of it (blockmon)",
               qmp="x-blockmon-block-map", ours=True),
    HmpCommand("merge-cost", "device:B,base:s?", "device [base]",
               "show the bytes a stream and a commit onto base (default: the bottom of the "
               "chain) would each copy (blockmon)",
               qmp="x-blockmon-merge-cost", ours=True,
               complete={"device": "devices", "base": "backing"}),
    HmpCommand("dirty-bitmaps", "device:B?", "[device]",
               "show the dirty bitmaps of each node of one block device or all block devices "
               "(blockmon)", qmp="x-blockmon-query-dirty-bitmaps", ours=True,
               complete={"device": "devices"}),
    HmpCommand("blockstats", "", "", "show block device statistics", qmp="query-blockstats"),
    HmpCommand("block-exports", "", "",
               "show the NBD server, its exports and their clients (blockmon)",
               qmp="x-blockmon-query-exports", ours=True),
)

HMP_COMMANDS: Tuple[HmpCommand, ...] = (
    HmpCommand("help|?", "name:S?", "[cmd]", "show the help", complete={"name": "commands"}),
    HmpCommand("quit|q", "", "", "quit the emulator", qmp="quit"),
    HmpCommand("block_stream", "device:B,speed:o?,base:s?", "device [speed [base]]",
               "copy data from a backing file into a block device", qmp="block-stream",
               complete={"base": "backing"}, word_fallback={"speed": "base"}),
    HmpCommand("commit", "device:B", "device|all",
               "commit changes to the disk images (if -snapshot is used) or backing files",
               qmp="x-blockmon-commit", complete={"device": "devices"}),
    HmpCommand("block_commit", "device:B,top:s?,base:s?,speed:o?", "device [top [base]] [speed]",
               "merge the images from top (default: the active image) down into base "
               "(default: the bottom of the chain) while the disk stays in use (blockmon)",
               qmp="block-commit", ours=True,
               complete={"device": "devices", "top": "backing", "base": "backing"}),
    HmpCommand("drive_mirror", "reuse:-n,full:-f,device:B,target:s,format:s?",
               "[-n] [-f] device target [format]",
               "initiates live storage\n\t\t\t"
               "migration for a device. The device's contents are\n\t\t\t"
               "copied to the new image file, including data that\n\t\t\t"
               "is written after the command is started.\n\t\t\t"
               "The -n flag requests QEMU to reuse the image found\n\t\t\t"
               "in new-image-file, instead of recreating it from scratch.\n\t\t\t"
               "The -f flag requests QEMU to copy the whole disk,\n\t\t\t"
               "so that the result does not need a backing file.\n\t\t\t",
               qmp="drive-mirror",
               complete={"device": "devices", "target": "files", "format": "formats"}),
    HmpCommand("block_job_set_speed", "device:B,speed:o", "device speed",
               "set maximum speed for a background block operation",
               qmp="block-job-set-speed", complete=_JOB_DEVICE),
    HmpCommand("block_job_cancel", "force:-f,device:B", "[-f] device",
               "stop an active background block operation (use -f"
               "\n\t\t\t if you want to abort the operation immediately"
               "\n\t\t\t instead of keep running until data is in sync)",
               qmp="block-job-cancel", complete=_JOB_DEVICE),
    # QEMU's help text for complete is a copy-paste of cancel's first words; kept.
    HmpCommand("block_job_complete", "device:B", "device",
               "stop an active background block operation",
               qmp="block-job-complete", complete=_JOB_DEVICE),
    HmpCommand("block_job_pause", "device:B", "device",
               "pause an active background block operation",
               qmp="block-job-pause", complete=_JOB_DEVICE),
    HmpCommand("block_job_resume", "device:B", "device",
               "resume a paused background block operation",
               qmp="block-job-resume", complete=_JOB_DEVICE),
    HmpCommand("snapshot_blkdev", "reuse:-n,device:B,snapshot-file:s?,format:s?",
               "[-n] device [new-image-file] [format]",
               "initiates a live snapshot\n\t\t\t"
               "of device. If a new image file is specified, the\n\t\t\t"
               "new image file will become the new root image.\n\t\t\t"
               "If format is specified, the snapshot file will\n\t\t\t"
               "be created in that format.\n\t\t\t"
               "The default format is qcow2.  The -n flag requests QEMU\n\t\t\t"
               "to reuse the image found in new-image-file, instead of\n\t\t\t"
               "recreating it from scratch.",
               qmp="blockdev-snapshot-sync",
               complete={"device": "devices", "snapshot-file": "files", "format": "formats"}),
    # -d (qdev id) is accepted for compatibility: our device ids are the drive names.
    HmpCommand("drive_backup", "reuse:-n,full:-f,compress:-c,device:B,target:s,format:s?",
               "[-n] [-f] [-c] device target [format]",
               "initiates a point-in-time\n\t\t\t"
               "copy for a device. The device's contents are\n\t\t\t"
               "copied to the new image file, excluding data that\n\t\t\t"
               "is written after the command is started.\n\t\t\t"
               "The -n flag requests QEMU to reuse the image found\n\t\t\t"
               "in new-image-file, instead of recreating it from scratch.\n\t\t\t"
               "The -f flag requests QEMU to copy the whole disk,\n\t\t\t"
               "so that the result does not need a backing file.\n\t\t\t"
               "The -c flag requests QEMU to compress backup data\n\t\t\t"
               "(if the target format supports it).\n\t\t\t",
               qmp="drive-backup",
               complete={"device": "devices", "target": "files", "format": "formats"}),
    HmpCommand("qemu-io", "qdev:-d,device:B,command:s", "[-d] [device] \"[command]\"",
               "run a qemu-io command on a block device\n\t\t\t"
               "-d: [device] is a device ID rather than a drive ID or node name",
               qmp="x-blockmon-qemu-io", complete={"command": "qemu-io"}),
    HmpCommand("block_dirty_bitmap_add", "persistent:-p,disabled:-d,device:B,name:s,granularity:o?",
               "[-p] [-d] device name [granularity]",
               "add a dirty bitmap to a block device or node: it records\n\t\t\t"
               "what the guest writes from now on (-p: stored in the\n\t\t\t"
               "qcow2 file, -d: not recording yet; granularity with a\n\t\t\t"
               "suffix, e.g. 64k) (blockmon)",
               qmp="block-dirty-bitmap-add", ours=True, complete={"device": "devices"}),
    HmpCommand("block_dirty_bitmap_remove", "device:B,name:s", "device name",
               "remove a dirty bitmap (from the qcow2 file too) (blockmon)",
               qmp="block-dirty-bitmap-remove", ours=True, complete={"device": "devices"}),
    HmpCommand("block_dirty_bitmap_clear", "device:B,name:s", "device name",
               "clear a dirty bitmap: nothing is dirty (blockmon)",
               qmp="block-dirty-bitmap-clear", ours=True, complete={"device": "devices"}),
    # QEMU's params strings start with the command name: its help prints the name twice.
    HmpCommand("nbd_server_start", "all:-a,writable:-w,uri:s",
               "nbd_server_start [-a] [-w] host:port",
               "serve block devices on the given host and port", qmp="nbd-server-start"),
    HmpCommand("nbd_server_add", "writable:-w,device:B,name:s?", "nbd_server_add [-w] device [name]",
               "export a block device via NBD", qmp="nbd-server-add",
               complete={"device": "devices"}),
    HmpCommand("nbd_server_remove", "force:-f,name:s", "nbd_server_remove [-f] name",
               "remove an export previously exposed via NBD", qmp="nbd-server-remove"),
    HmpCommand("nbd_server_stop", "", "nbd_server_stop",
               "stop serving block devices using the NBD protocol", qmp="nbd-server-stop"),
    HmpCommand("info", "item:s?", "[subcommand]",
               "show various information about the system state",
               sub_table=INFO_COMMANDS, complete={"item": "info"}),
    HmpCommand("block_job_wait", "device:B?", "[device]",
               "wait until the device's block job (or every job) has ended "
               "or is ready to complete, showing progress; Ctrl-C stops waiting (blockmon)",
               ours=True, complete=_JOB_DEVICE),
    HmpCommand("sleep", "seconds:T", "seconds",
               "pause the script for a number of seconds (blockmon)", ours=True),
)

# -- QMP commands: name, argument schema, handler -------------------------------------------
# A schema maps argument name -> type; '*' marks optional (QAPI notation); a type is
# "str", "int", "bool", "object" (a JSON object the handler checks), an enum name of
# ENUMS, [type], or "any" (an alternate such as BlockDirtyBitmapOrStr, which the
# handler checks).
ENUMS: Dict[str, Tuple[str, ...]] = {
    "BlockdevOnError": ON_ERROR_POLICIES,
    "NewImageMode": ("existing", "absolute-paths"),
    "MirrorSyncMode": ("top", "full", "none", "incremental", "bitmap"),
    "BitmapSyncMode": ("on-success", "never", "always"),
    "BlockExportRemoveMode": ("safe", "hard"),
    "BlockExportType": ("nbd",),
    "MirrorCopyMode": ("background", "write-blocking"),
}

_MIRROR_COMMON = {
    "*job-id": "str", "device": "str", "target": "str", "*replaces": "str",
    "sync": "MirrorSyncMode", "*speed": "int", "*granularity": "int", "*buf-size": "int",
    "*on-source-error": "BlockdevOnError", "*on-target-error": "BlockdevOnError",
    "*copy-mode": "MirrorCopyMode", "*auto-finalize": "bool", "*auto-dismiss": "bool",
}


@dataclass(frozen=True)
class QmpCommand:
    """One QMP command: its name, its argument schema and its handler.

    ``handler`` is a reference, "module.function" inside this package, resolved
    on first use (``handler_function``): the table imports no handler code, so
    reading it (help, completion, the lexer) costs nothing and has no circle.
    """
    name: str
    handler: str
    schema: Dict[str, object] = field(default_factory=dict)


_STREAM_SCHEMA = {
    "*job-id": "str", "device": "str", "*base": "str", "*base-node": "str",
    "*backing-file": "str", "*speed": "int", "*on-error": "BlockdevOnError",
    "*auto-finalize": "bool", "*auto-dismiss": "bool",
}
_COMMIT_SCHEMA = {
    "*job-id": "str", "device": "str", "*base-node": "str", "*base": "str",
    "*top-node": "str", "*top": "str", "*backing-file": "str", "*speed": "int",
    "*on-error": "BlockdevOnError", "*filter-node-name": "str",
    "*auto-finalize": "bool", "*auto-dismiss": "bool",
}
_BACKUP_SCHEMA = {
    "*job-id": "str", "device": "str", "sync": "MirrorSyncMode", "*speed": "int",
    "*bitmap": "str", "*bitmap-mode": "BitmapSyncMode", "*compress": "bool",
    "*on-source-error": "BlockdevOnError", "*on-target-error": "BlockdevOnError",
    "*auto-finalize": "bool", "*auto-dismiss": "bool", "target": "str",
    "*format": "str", "*mode": "NewImageMode",
}
_NODE_BACKUP_SCHEMA = {key: kind for key, kind in _BACKUP_SCHEMA.items()
                       if key not in ("*format", "*mode")}
_BITMAP = {"node": "str", "name": "str"}
_SNAPSHOT_SCHEMA = {
    "*device": "str", "*node-name": "str", "snapshot-file": "str",
    "*snapshot-node-name": "str", "*format": "str", "*mode": "NewImageMode",
}

_EXPORT_SCHEMA = {
    "type": "BlockExportType", "id": "str", "*fixed-iothread": "bool", "*iothread": "str",
    "node-name": "str", "*writable": "bool", "*writethrough": "bool", "*name": "str",
    "*description": "str", "*bitmaps": ["any"], "*allocation-depth": "bool",
}

QMP_COMMANDS: Tuple[QmpCommand, ...] = (
    QmpCommand("qmp_capabilities", "qmp_handlers.qmp_capabilities", {"*enable": ["str"]}),
    QmpCommand("query-version", "qmp_handlers.query_version"),
    QmpCommand("query-commands", "qmp_handlers.query_commands"),
    QmpCommand("query-block", "qmp_handlers.query_block"),
    QmpCommand("query-block-jobs", "qmp_handlers.query_block_jobs"),
    QmpCommand("block-stream", "block_stream.start_stream", _STREAM_SCHEMA),
    QmpCommand("block-commit", "block_commit.start_commit", _COMMIT_SCHEMA),
    QmpCommand("drive-mirror", "mirror.drive_mirror",
               dict(_MIRROR_COMMON, **{"*format": "str", "*node-name": "str",
                                       "*mode": "NewImageMode", "*unmap": "bool"})),
    QmpCommand("blockdev-mirror", "mirror.blockdev_mirror",
               dict(_MIRROR_COMMON, **{"*filter-node-name": "str"})),
    QmpCommand("blockdev-add", "block_nodes.blockdev_add", {
        "driver": "str", "*node-name": "str", "*file": "any", "*filename": "str",
        "*backing": "any", "*read-only": "bool", "*auto-read-only": "bool",
        "*discard": "str", "*cache": "any", "*detect-zeroes": "str", "*force-share": "bool"}),
    QmpCommand("blockdev-del", "block_nodes.blockdev_del", {"node-name": "str"}),
    QmpCommand("query-named-block-nodes", "block_nodes.query_named_block_nodes",
               {"*flat": "bool"}),
    QmpCommand("block-job-set-speed", "qmp_handlers.block_job_set_speed",
               {"device": "str", "speed": "int"}),
    QmpCommand("block-job-cancel", "qmp_handlers.block_job_cancel",
               {"device": "str", "*force": "bool"}),
    QmpCommand("block-job-pause", "qmp_handlers.block_job_pause", {"device": "str"}),
    QmpCommand("block-job-resume", "qmp_handlers.block_job_resume", {"device": "str"}),
    QmpCommand("block-job-complete", "qmp_handlers.block_job_complete", {"device": "str"}),
    QmpCommand("block-job-finalize", "qmp_handlers.job_finalize", {"id": "str"}),
    QmpCommand("block-job-dismiss", "qmp_handlers.job_dismiss", {"id": "str"}),
    # QEMU 3.0's generic job commands (job-qmp.c): any job, by "id"
    QmpCommand("query-jobs", "qmp_handlers.query_jobs"),
    QmpCommand("job-pause", "qmp_handlers.generic_job_pause", {"id": "str"}),
    QmpCommand("job-resume", "qmp_handlers.generic_job_resume", {"id": "str"}),
    QmpCommand("job-cancel", "qmp_handlers.generic_job_cancel", {"id": "str"}),
    QmpCommand("job-complete", "qmp_handlers.generic_job_complete", {"id": "str"}),
    QmpCommand("job-finalize", "qmp_handlers.generic_job_finalize", {"id": "str"}),
    QmpCommand("job-dismiss", "qmp_handlers.generic_job_dismiss", {"id": "str"}),
    QmpCommand("blockdev-snapshot-sync", "snapshot.snapshot_sync", _SNAPSHOT_SCHEMA),
    QmpCommand("human-monitor-command", "qmp_handlers.human_monitor_command",
               {"command-line": "str", "*cpu-index": "int"}),
    QmpCommand("x-blockmon-qemu-io", "qmp_handlers.qemu_io", {"device": "str", "command": "str"}),
    QmpCommand("x-blockmon-block-map", "qmp_handlers.block_map", {"device": "str"}),
    QmpCommand("x-blockmon-commit", "block_commit.commit_device", {"device": "str"}),
    QmpCommand("x-blockmon-merge-cost", "block_commit.merge_cost",
               {"device": "str", "*base": "str"}),
    QmpCommand("drive-backup", "backup.drive_backup", _BACKUP_SCHEMA),
    QmpCommand("blockdev-backup", "backup.blockdev_backup", _NODE_BACKUP_SCHEMA),
    QmpCommand("block-dirty-bitmap-add", "bitmaps.add",
               dict(_BITMAP, **{"*granularity": "int", "*persistent": "bool",
                                "*disabled": "bool"})),
    QmpCommand("block-dirty-bitmap-remove", "bitmaps.remove", _BITMAP),
    QmpCommand("block-dirty-bitmap-clear", "bitmaps.clear", _BITMAP),
    QmpCommand("block-dirty-bitmap-enable", "bitmaps.enable", _BITMAP),
    QmpCommand("block-dirty-bitmap-disable", "bitmaps.disable", _BITMAP),
    QmpCommand("block-dirty-bitmap-merge", "bitmaps.merge",
               {"node": "str", "target": "str", "bitmaps": ["any"]}),
    QmpCommand("x-blockmon-query-dirty-bitmaps", "bitmaps.query"),
    QmpCommand("quit", "qmp_handlers.quit"),
    QmpCommand("query-blockstats", "qmp_handlers.query_blockstats", {"*query-nodes": "bool"}),
    # addr is QAPI's SocketAddressLegacy ({"type", "data"}); commands.exports checks inside it
    QmpCommand("nbd-server-start", "exports.nbd_server_start",
               {"addr": "object", "*tls-creds": "str", "*tls-authz": "str",
                "*max-connections": "int"}),
    QmpCommand("nbd-server-add", "exports.nbd_server_add",
               {"device": "str", "*name": "str", "*description": "str", "*writable": "bool",
                "*bitmap": "str"}),
    QmpCommand("nbd-server-remove", "exports.nbd_server_remove",
               {"name": "str", "*mode": "BlockExportRemoveMode"}),
    QmpCommand("nbd-server-stop", "exports.nbd_server_stop"),
    QmpCommand("block-export-add", "exports.block_export_add", _EXPORT_SCHEMA),
    QmpCommand("block-export-del", "exports.block_export_del",
               {"id": "str", "*mode": "BlockExportRemoveMode"}),
    QmpCommand("query-block-exports", "exports.query_block_exports"),
    QmpCommand("x-blockmon-query-exports", "exports.query_exports_details"),
)


def find_command(word: str, table: Tuple[HmpCommand, ...] = HMP_COMMANDS) -> Optional[HmpCommand]:
    """The entry whose name or alias is ``word`` (QEMU's hmp_compare_cmd), or None."""
    for command in table:
        if word in command.names:
            return command
    return None


def command_words(table: Tuple[HmpCommand, ...] = HMP_COMMANDS) -> Tuple[str, ...]:
    """Every name and alias, for the completer and the lexer."""
    return tuple(word for command in table for word in command.names)


def find_qmp_command(name: str) -> Optional[QmpCommand]:
    """The QMP entry called ``name``, or None."""
    for command in QMP_COMMANDS:
        if command.name == name:
            return command
    return None


def qmp_command_names() -> Tuple[str, ...]:
    """What ``query-commands`` lists."""
    return tuple(sorted(command.name for command in QMP_COMMANDS))


def handler_function(command: QmpCommand):
    """The function ``command.handler`` names: ``handler(core, arguments)``."""
    module_name, _, function = command.handler.rpartition(".")
    module = importlib.import_module("%s.%s" % (__package__, module_name))
    return getattr(module, function)
