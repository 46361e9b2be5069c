"""The HMP interpreter: one command line in, QEMU's text out, via the QMP-shaped core.

``HmpInterpreter(core).run_line(line)`` finds the command in the table, parses its
arguments (``commands.args``), and calls the adapter, which maps words to QMP
arguments exactly as QEMU's block/monitor/block-hmp-cmds.c does and calls
``core.execute``.  Command errors print ``Error: <desc>``; parse errors print the
message and ``Try "help <cmd>" for more information``; success prints nothing.
Console-bound commands (``block_job_wait``, ``sleep``) go through ``handlers`` so
the terminal front end can draw progress while they block.
"""
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

from images.errors import BlockError

from . import hmp_info as info_text
from .args import _SPACE, ParseError, parse_arguments
from .errors import BareError, CommandError, qmp_error
from .hmp_exports import (hmp_info_block_exports, hmp_info_blockstats,  # noqa: F401 (adapters)
                          hmp_nbd_server_add, hmp_nbd_server_remove, hmp_nbd_server_start,
                          hmp_nbd_server_stop)
from .table import HMP_COMMANDS, INFO_COMMANDS, HmpCommand, find_command
# Adapters written beside their commands, found by name like the ones below.
from .backup import hmp_drive_backup  # noqa: F401
from .bitmaps import (hmp_block_dirty_bitmap_add, hmp_block_dirty_bitmap_clear,  # noqa: F401
                      hmp_block_dirty_bitmap_remove, hmp_info_dirty_bitmaps)


@dataclass(frozen=True)
class HmpResult:
    output: str         # "\n" line ends
    ok: bool            # false after a parse error, an unknown command or "Error: ..."
    quit: bool = False


def control_character(line: str) -> Optional[str]:
    """The first character a command line must not hold (tab is a space), or None."""
    for char in line:
        if (ord(char) < 32 and char != "\t") or ord(char) == 127:
            return char
    return None


class HmpInterpreter:
    """Runs HMP command lines against ``core``: a ``commands.core.BlockCore`` (this
    module uses its ``execute`` and ``wait_jobs``)."""

    def __init__(self, core, handlers: Optional[Dict[str, Callable[[dict], str]]] = None):
        self.core = core
        self.handlers = {"block_job_wait": self._wait, "sleep": self._sleep}
        self.handlers.update(handlers or {})

    def run_line(self, line: str) -> HmpResult:
        line = line.rstrip("\r\n").lstrip(_SPACE)
        bad = control_character(line)
        if bad is not None:
            return HmpResult("invalid control character 0x%02x in command line\n" % ord(bad), False)
        if not line.strip(_SPACE):
            return HmpResult("", True)
        word, rest = _split_word(line)
        command = find_command(word)
        if command is None:
            return HmpResult("unknown command: '%s'\n" % word, False)
        typed, info = word, False
        if command.sub_table is not None and rest.strip(_SPACE):
            sub_word, rest = _split_word(rest.lstrip(_SPACE))
            typed = line[:len(line) - len(rest)].rstrip(_SPACE)
            command = find_command(sub_word, command.sub_table)
            if command is None:
                return HmpResult("unknown command: '%s'\n" % typed, False)
            word, info = sub_word, True
        try:
            args = parse_arguments(word, command.args_type, rest, command.word_fallback)
        except ParseError as err:
            return HmpResult('%s\nTry "help %s" for more information\n' % (err.message, typed), False)
        if not info and command.primary in self.handlers:
            return self._run(lambda hmp, a: self.handlers[command.primary](a) or "", args)
        return self._run(adapter_of(command, info), args, command.primary == "quit")

    def _run(self, adapter, args: dict, quit: bool = False) -> HmpResult:
        try:
            return HmpResult(adapter(self, args), True, quit)
        except BareError as err:
            return HmpResult(err.text, False)
        except (CommandError, BlockError) as err:
            hint = getattr(err, "hint", None)      # QEMU's error_append_hint: a second line
            return HmpResult("Error: %s\n%s" % (qmp_error(err)["desc"], hint + "\n" if hint else ""),
                             False)

    # -- console-bound defaults (the monitor overrides them) ---------------------------
    def _wait(self, args: dict) -> str:
        self.core.wait_jobs(args.get("device"))
        return ""

    def _sleep(self, args: dict) -> str:
        time.sleep(args["seconds"])
        return ""


def _split_word(text: str):
    """QEMU's get_command_name: the word up to the first space, and the rest."""
    end = 0
    while end < len(text) and text[end] not in _SPACE:
        end += 1
    return text[:end], text[end:]


# -- adapters: words -> QMP arguments -> text (block-hmp-cmds.c) --------------------------
def hmp_block_stream(hmp, args):
    device = args["device"]
    qmp = {"job-id": device, "device": device, "on-error": "report"}
    if "base" in args:
        qmp["base"] = args["base"]
    if "speed" in args:
        qmp["speed"] = args["speed"]
    hmp.core.execute("block-stream", qmp)
    return ""


def hmp_commit(hmp, args):
    hmp.core.execute("x-blockmon-commit", {"device": args["device"]})
    return ""


def hmp_block_commit(hmp, args):
    qmp = {"device": args["device"]}
    for name in ("top", "base", "speed"):
        if name in args:
            qmp[name] = args[name]
    hmp.core.execute("block-commit", qmp)
    return ""


def hmp_drive_mirror(hmp, args):
    """hmp_drive_mirror: -f is sync=full (else top), -n is mode=existing; unmap on."""
    qmp = {"device": args["device"], "target": args["target"],
           "sync": "full" if args.get("full") else "top",
           "mode": "existing" if args.get("reuse") else "absolute-paths", "unmap": True}
    if "format" in args:
        qmp["format"] = args["format"]
    hmp.core.execute("drive-mirror", qmp)
    return ""


def _job_verb(qmp_name, with_force=False, with_speed=False):
    def adapter(hmp, args):
        qmp = {"device": args["device"]}
        if with_force:
            qmp["force"] = bool(args.get("force", False))
        if with_speed:
            qmp["speed"] = args["speed"]
        hmp.core.execute(qmp_name, qmp)
        return ""
    return adapter


def hmp_snapshot_blkdev(hmp, args):
    if "snapshot-file" not in args:
        raise CommandError("Parameter 'snapshot-file' is missing")
    qmp = {"device": args["device"], "snapshot-file": args["snapshot-file"],
           "mode": "existing" if args.get("reuse") else "absolute-paths"}
    if "format" in args:
        qmp["format"] = args["format"]
    hmp.core.execute("blockdev-snapshot-sync", qmp)
    return ""


def hmp_qemu_io(hmp, args):
    return hmp.core.execute("x-blockmon-qemu-io",
                            {"device": args["device"], "command": args["command"]})


def hmp_help(hmp, args):
    return info_text.format_help(args.get("name", "").split())


def hmp_info(hmp, args):
    return info_text.format_info_help()


def hmp_quit(hmp, args):
    hmp.core.execute("quit", {})
    return ""


def hmp_info_block(hmp, args):
    if args.get("nodes"):
        nodes = hmp.core.execute("query-named-block-nodes", {})
        return info_text.format_nodes(nodes, bool(args.get("verbose")), args.get("device"))
    devices = hmp.core.execute("query-block", {})
    return info_text.format_block(devices, bool(args.get("verbose")), args.get("device"))


def hmp_info_blockmap(hmp, args):
    if "device" in args:
        names = [args["device"]]
    else:
        names = [info["device"] for info in hmp.core.execute("query-block", {})]
    maps = [info_text.format_blockmap(name, hmp.core.execute("x-blockmon-block-map",
                                                            {"device": name}))
            for name in names]
    return "\n".join(maps) + (info_text.BLOCKMAP_LEGEND if maps else "")


hmp_block_job_set_speed = _job_verb("block-job-set-speed", with_speed=True)
hmp_block_job_cancel = _job_verb("block-job-cancel", with_force=True)
hmp_block_job_complete = _job_verb("block-job-complete")
hmp_block_job_pause = _job_verb("block-job-pause")
hmp_block_job_resume = _job_verb("block-job-resume")


def hmp_info_version(hmp, args):
    return info_text.format_version(hmp.core.execute("query-version", {}))


def hmp_info_block_jobs(hmp, args):
    return info_text.format_block_jobs(hmp.core.execute("query-block-jobs", {}))


def hmp_info_merge_cost(hmp, args):
    return info_text.format_merge_cost(hmp.core.execute("x-blockmon-merge-cost", args))


def adapter_of(command: HmpCommand, info: bool = False):
    """The adapter of a table entry: ``hmp_<name>`` (``hmp_info_<name>``), QEMU's naming; None
    for the console-bound commands, which run through the interpreter's ``handlers``."""
    name = ("hmp_info_" if info else "hmp_") + command.primary.replace("-", "_")
    return globals().get(name)


def adapter_names():
    """(HMP command, info subcommand) names that have adapters, for the table lint."""
    return ({c.primary for c in HMP_COMMANDS if adapter_of(c) is not None},
            {c.primary for c in INFO_COMMANDS if adapter_of(c, info=True) is not None})

