"""The command line of ``blockmon``, parsed by pure functions.

``parse_command_line(argv)`` returns an ``Options`` or raises ``UsageError`` whose
message is the one line the CLI prints (exit status 2).  ``-drive`` values follow
QEMU's ``key=value,...`` syntax (``monitor.option_syntax``) and QEMU's device naming: virtio drives are
``virtio0``, ``virtio1``, ... in order (or by ``index``), ide index N is
``ide<N//2>-hd<N%2>``, ``if=none`` needs ``id``; ``id`` names any drive.
"""
from dataclasses import dataclass, field
from typing import List, Optional

from images.driver import FORMATS
from monitor.chardev import ChardevError, ChardevSpec, parse_chardev
from monitor.option_syntax import parse_bool, split_commas, split_key_value

DRIVE_KEYS = ("file", "if", "index", "id", "format", "node-name", "readonly", "file.locking")
INTERFACES = ("virtio", "ide", "none")
IDE_MAX_INDEX = 3          # two buses, two units each, as QEMU's default machine
VIRTIO_MAX_INDEX = 255


class UsageError(Exception):
    """A bad command-line option; ``str(exc)`` is the one-line message."""


@dataclass(frozen=True)
class DriveSpec:
    """One drive to open: ``core.add_drive(device, path, format, node_name, read_only,
    locking)``; ``locking`` false is QEMU's ``file.locking=off``."""
    device: str
    path: str
    format: Optional[str] = None
    node_name: Optional[str] = None
    read_only: bool = False
    locking: bool = True


@dataclass
class Options:
    drives: List[DriveSpec] = field(default_factory=list)
    commands: List[str] = field(default_factory=list)
    quiet: bool = False
    show_version: bool = False
    show_help: bool = False
    demo: bool = False
    demo_dir: Optional[str] = None
    walkthrough: bool = False
    qmp_specs: List[ChardevSpec] = field(default_factory=list)      # parsed once, here
    monitor_specs: List[ChardevSpec] = field(default_factory=list)
    # --nbd-server and --export values as typed; monitor.daemon_options parses them
    nbd_server_texts: List[str] = field(default_factory=list)
    export_texts: List[str] = field(default_factory=list)
    nbd_server: Optional[dict] = None       # nbd-server-start arguments, once parsed
    exports: List[dict] = field(default_factory=list)   # block-export-add arguments


def split_drive_value(text: str) -> dict:
    """``file=a,if=ide`` -> {"file": "a", "if": "ide"}; ``,,`` escapes a comma as in QEMU."""
    result = {}
    for item in split_commas(text):
        key, value = split_key_value(item)
        if value is None:
            raise UsageError("-drive %s: expected key=value, got '%s'" % (text, item))
        if key not in DRIVE_KEYS:
            raise UsageError("-drive %s: unknown key '%s'" % (text, key))
        if key in result:
            raise UsageError("-drive %s: key '%s' given twice" % (text, key))
        result[key] = value
    return result


def _check_drive_values(text: str, values: dict) -> None:
    if not values.get("file"):
        raise UsageError("-drive %s: file=PATH is required" % text)
    if values.get("if", "virtio") not in INTERFACES:
        raise UsageError("-drive %s: unknown interface '%s' (virtio, ide or none)" % (text, values["if"]))
    if "format" in values and values["format"] not in FORMATS:
        raise UsageError("-drive %s: unknown format '%s' (qcow2 or raw)" % (text, values["format"]))
    if parse_bool(values.get("readonly", "off")) is None:
        raise UsageError("-drive %s: readonly expects on or off, got '%s'" % (text, values["readonly"]))
    if values.get("file.locking", "auto") not in ("on", "off", "auto"):
        raise UsageError("-drive %s: file.locking expects on, off or auto, got '%s'"
                         % (text, values["file.locking"]))
    if "index" in values and not (values["index"].isascii() and values["index"].isdigit()):
        raise UsageError("-drive %s: index expects a number, got '%s'" % (text, values["index"]))
    if values.get("if") == "none" and not values.get("id"):
        raise UsageError("-drive %s: if=none needs id=NAME" % text)
    for key in ("id", "node-name"):
        if key in values and not _is_name(values[key]):
            raise UsageError("-drive %s: invalid %s '%s'" % (text, key, values[key]))


def _is_name(value: str) -> bool:
    return bool(value) and value[0].isalpha() and all(c.isalnum() or c in "-_." for c in value)


def device_name(interface: str, index: int) -> str:
    """QEMU's BlockBackend name for an interface and index."""
    if interface == "ide":
        return "ide%d-hd%d" % (index // 2, index % 2)
    return "%s%d" % (interface, index)


def assign_devices(drive_values: List[dict]) -> List[DriveSpec]:
    """Name every drive as QEMU does; explicit indexes are claimed first, then the next free one."""
    taken = {"virtio": set(), "ide": set()}
    for values in drive_values:
        interface = values.get("if", "virtio")
        if interface != "none" and "index" in values:
            index = int(values["index"])
            limit = _max_index(interface)
            if index > limit:
                raise UsageError("-drive file=%s: index %d out of range for if=%s (0-%d)"
                                 % (values["file"], index, interface, limit))
            if index in taken[interface]:
                raise UsageError("-drive file=%s: if=%s index=%d is already in use"
                                 % (values["file"], interface, index))
            taken[interface].add(index)
    specs, names = [], set()
    for values in drive_values:
        name = values.get("id") or _next_device(values, taken)
        if name in names:
            raise UsageError("-drive file=%s: duplicate drive name '%s'" % (values["file"], name))
        names.add(name)
        specs.append(DriveSpec(device=name, path=values["file"], format=values.get("format"),
                               node_name=values.get("node-name"),
                               read_only=bool(parse_bool(values.get("readonly", "off"))),
                               locking=values.get("file.locking") != "off"))
    return specs


def _max_index(interface: str) -> int:
    return IDE_MAX_INDEX if interface == "ide" else VIRTIO_MAX_INDEX


def _next_device(values: dict, taken: dict) -> str:
    interface = values.get("if", "virtio")
    if "index" in values:
        return device_name(interface, int(values["index"]))
    index = 0
    while index in taken[interface]:
        index += 1
    if index > _max_index(interface):
        raise UsageError("-drive file=%s: no free if=%s index left" % (values["file"], interface))
    taken[interface].add(index)
    return device_name(interface, index)


def parse_drive(text: str) -> dict:
    """One ``-drive`` value, checked; raises UsageError naming the bad part."""
    values = split_drive_value(text)
    _check_drive_values(text, values)
    return values


# Options taking a value: spelled QEMU's way (-drive) or GNU's way (--drive).
_VALUE_OPTIONS = {"drive": "drive", "c": "command", "qmp": "qmp", "monitor": "monitor",
                  "nbd-server": "nbd-server", "export": "export"}
_FLAG_OPTIONS = {"q": "quiet", "quiet": "quiet", "version": "version", "help": "help", "h": "help",
                 "walkthrough": "walkthrough"}


def parse_command_line(argv: List[str]) -> Options:
    """Parse ``argv`` (without the program name) into Options; raises UsageError."""
    options, drive_values, i = Options(), [], 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            drive_values.extend({"file": path} for path in argv[i:])
            break
        if not arg.startswith("-") or arg == "-":
            drive_values.append({"file": arg})
            continue
        name = arg.lstrip("-")
        if name == "demo":
            options.demo = True
            if i < len(argv) and not argv[i].startswith("-"):
                options.demo_dir = argv[i]
                i += 1
        elif name in _FLAG_OPTIONS:
            _set_flag(options, _FLAG_OPTIONS[name])
        elif name in _VALUE_OPTIONS:
            if i >= len(argv):
                raise UsageError("option %s needs a value" % arg)
            _set_value(options, drive_values, _VALUE_OPTIONS[name], argv[i])
            i += 1
        else:
            raise UsageError("unknown option %s" % arg)
    if options.walkthrough and not options.demo:
        raise UsageError("option --walkthrough needs --demo")
    if options.demo and drive_values:
        raise UsageError("--demo makes its own drives; drop -drive and IMAGE arguments")
    options.drives = assign_devices(drive_values)
    return options


def _set_flag(options: Options, flag: str) -> None:
    if flag == "quiet":
        options.quiet = True
    elif flag == "version":
        options.show_version = True
    elif flag == "help":
        options.show_help = True
    else:
        options.walkthrough = True


def _set_value(options: Options, drive_values: list, kind: str, value: str) -> None:
    if kind == "drive":
        drive_values.append(parse_drive(value))
    elif kind == "command":
        options.commands.append(value)
    elif kind == "nbd-server":
        options.nbd_server_texts.append(value)
    elif kind == "export":
        options.export_texts.append(value)
    else:
        try:
            spec = parse_chardev(value)
        except ChardevError as err:
            raise UsageError("-%s %s" % (kind, err)) from err
        (options.qmp_specs if kind == "qmp" else options.monitor_specs).append(spec)


USAGE = """\
usage: blockmon [options] [IMAGE...]

A QEMU-monitor console for live block operations on qcow2 backing chains.

  IMAGE                  open IMAGE as the next virtio drive (virtio0, virtio1, ...)
  -drive file=PATH[,if=virtio|ide|none][,index=N][,id=NAME][,format=qcow2|raw]
         [,node-name=NAME][,readonly=on][,file.locking=off]
                         open a drive with QEMU's naming (ide index N is ide<N//2>-hd<N%2>)
  -c COMMAND             run a monitor command without a prompt (repeatable)
  -q                     scripted sessions: do not echo "(qemu) <command>"
  -qmp SPEC              serve QMP, e.g. unix:/tmp/qmp.sock,server=on,wait=off or tcp:127.0.0.1:4444
  -monitor SPEC          serve the human monitor (HMP) on a socket, same SPEC syntax
  --nbd-server addr.type=unix,addr.path=PATH | addr.type=inet,addr.host=H,addr.port=P
               [,max-connections=N]
                         serve NBD exports (qemu-storage-daemon's syntax; no TLS)
  --export type=nbd,id=ID,node-name=NODE[,name=NAME][,writable=on][,allocation-depth=on]
                         export a node or device over NBD (NODE: a node or device name)
  --demo [DIR]           build a demo chain [A] <- [B] <- [C] <- [D] (virtio0) and a second
                         disk (ide0-hd0) in DIR (default: a new temporary directory)
  --walkthrough          with --demo: play the live-merge and live-copy scenarios
  --version              print the version and exit
  --help                 print this help and exit

With standard input not a terminal, blockmon runs the lines it reads as a script;
with a -qmp/-monitor/--nbd-server server it then keeps serving until quit or a signal.
"""
