"""``--nbd-server`` and ``--export``: qemu-storage-daemon's spellings, parsed by pure functions.

``parse_nbd_server(text)`` gives ``nbd-server-start``'s QMP arguments (the flat
``addr.type=unix,addr.path=PATH`` becomes QAPI's legacy ``{"type", "data"}`` form);
``parse_export(text)`` gives ``block-export-add``'s.  Bad values raise UsageError
with one line naming the part.
"""
from monitor.drive_options import UsageError
from monitor.option_syntax import parse_bool, split_commas, split_key_value

_SERVER_KEYS = ("addr.type", "addr.path", "addr.host", "addr.port", "max-connections")
_EXPORT_KEYS = ("type", "id", "node-name", "name", "description", "writable",
                "writethrough", "allocation-depth")


def _key_values(option: str, text: str, keys) -> dict:
    values = {}
    for item in split_commas(text):
        key, value = split_key_value(item)
        if value is None:
            raise UsageError("%s %s: expected key=value, got '%s'" % (option, text, item))
        if key not in keys:
            raise UsageError("%s %s: unknown key '%s'" % (option, text, key))
        if key in values:
            raise UsageError("%s %s: key '%s' given twice" % (option, text, key))
        values[key] = value
    return values


def _required(option, text, values, key):
    if not values.get(key):
        raise UsageError("%s %s: %s=... is required" % (option, text, key))
    return values[key]


def parse_daemon_options(options) -> None:
    """Fill ``options.nbd_server`` and ``options.exports`` from the texts typed."""
    if len(options.nbd_server_texts) > 1:
        raise UsageError("--nbd-server given twice")
    for text in options.nbd_server_texts:
        options.nbd_server = parse_nbd_server(text)
    options.exports = [parse_export(text) for text in options.export_texts]


def parse_nbd_server(text: str) -> dict:
    values = _key_values("--nbd-server", text, _SERVER_KEYS)
    kind = _required("--nbd-server", text, values, "addr.type")
    if kind == "unix":
        data = {"path": _required("--nbd-server", text, values, "addr.path")}
    elif kind == "inet":
        data = {"host": _required("--nbd-server", text, values, "addr.host"),
                "port": _required("--nbd-server", text, values, "addr.port")}
    else:
        raise UsageError("--nbd-server %s: addr.type must be unix or inet, not '%s'" % (text, kind))
    args = {"addr": {"type": kind, "data": data}}
    if "max-connections" in values:
        if not values["max-connections"].isdigit():
            raise UsageError("--nbd-server %s: max-connections expects a number, got '%s'"
                             % (text, values["max-connections"]))
        args["max-connections"] = int(values["max-connections"])
    return args


def parse_export(text: str) -> dict:
    values = _key_values("--export", text, _EXPORT_KEYS)
    if _required("--export", text, values, "type") != "nbd":
        raise UsageError("--export %s: only type=nbd is supported" % text)
    args = {"type": "nbd", "id": _required("--export", text, values, "id"),
            "node-name": _required("--export", text, values, "node-name")}
    for key in ("name", "description"):
        if key in values:
            args[key] = values[key]
    for key in ("writable", "writethrough", "allocation-depth"):
        if key in values:
            flag = parse_bool(values[key])
            if flag is None:
                raise UsageError("--export %s: %s expects on or off, got '%s'"
                                 % (text, key, values[key]))
            args[key] = flag
    return args
