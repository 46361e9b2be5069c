"""Block exports: the NBD server commands and the table of exports.

``ExportTable`` holds the exports (id, NBD name, the ``BlockBackend`` clients reach,
writability) and runs the QMP commands ``nbd-server-start``/``-stop``/``-add``/
``-remove``, ``block-export-add``/``-del`` and ``query-block-exports`` with QEMU 7.2's
texts.  The sockets are not here: the monitor gives the core a ``server_factory``;
``server_factory(table, address, max_connections)`` returns a running server
offering ``clients(export)``, ``drop_clients(export)``, ``stop()`` and
``description``, and raises CommandError when it cannot listen.  The server asks
this table ``find(name)`` and ``list()`` during negotiation.
"""
import threading

from . import export_bitmaps
from .bitmaps import check_bitmap_or_str
from .block_backend import BlockBackend
from .errors import CommandError

MAX_NAME = 4096
STILL_IN_USE_HINT = "Use mode='hard' to force client disconnect"


class Export:
    def __init__(self, export_id, name, backend, writable, description="",
                 allocation_depth=False, writethrough=False):
        self.id = export_id
        self.name = name
        self.backend = backend
        self.writable = writable
        self.description = description or ""
        self.allocation_depth = allocation_depth
        self.writethrough = writethrough
        self.bitmaps = []           # (context name, DirtyBitmap): export_bitmaps.resolve
        self.shutting_down = False

    @property
    def size(self) -> int:
        return self.backend.virtual_size

    def info(self) -> dict:
        return {"node-name": self.backend.node_name, "shutting-down": self.shutting_down,
                "type": "nbd", "id": self.id}


class ExportTable:
    def __init__(self, core, server_factory=None):
        self.core = core
        self.server_factory = server_factory
        self.server = None
        self._lock = threading.RLock()
        self._exports = []          # oldest first
        self._pending = []          # (image, callback): run once no export reads the image

    # -- what the NBD server asks -----------------------------------------------------
    def find(self, name):
        with self._lock:
            for export in self._exports:
                if export.name == name and not export.shutting_down:
                    return export
        return None

    def list(self):
        with self._lock:
            return [e for e in self._exports if not e.shutting_down]

    # -- the server ----------------------------------------------------------------
    def start_server(self, args):
        address = legacy_address(args["addr"])
        max_connections = args.get("max-connections", 0)
        if not 0 <= max_connections <= 0xFFFFFFFF:
            raise CommandError("Parameter 'max-connections' expects uint32")
        with self._lock:
            if self.server is not None:
                raise CommandError("NBD server already running")
            if self.server_factory is None:
                raise CommandError("NBD server not available in this process")
            self.server = self.server_factory(self, address, max_connections)
        return {}

    def stop_server(self, args=None):
        with self._lock:
            if self.server is None:
                raise CommandError("NBD server not running")
            for export in list(reversed(self._exports)):
                self._delete(export)
            server, self.server = self.server, None
        server.stop()
        return {}

    def shutdown(self):
        """At quit: every export goes (with its event), then the listener."""
        with self._lock:
            running = self.server is not None
        if running:
            self.stop_server()

    # -- adding ---------------------------------------------------------------------
    def nbd_server_add(self, args):
        self._require_server()
        device = args["device"]
        name = args.get("name", device)
        backend = self._backend(device, device)
        writable = args.get("writable", False) and not backend.read_only   # QEMU downgrades
        bitmaps = [args["bitmap"]] if "bitmap" in args else []
        self._add(Export(name, name, backend, writable, args.get("description", "")), bitmaps)
        return {}

    def block_export_add(self, args):
        self._require_server()
        node = args["node-name"]
        name = args.get("name", node)
        backend = self._backend(None, node)
        if args.get("writable", False) and backend.read_only:
            raise CommandError("Block node is read-only")
        self._add(Export(args["id"], name, backend, args.get("writable", False),
                         args.get("description", ""), args.get("allocation-depth", False),
                         args.get("writethrough", False)), args.get("bitmaps", []))
        return {}

    def _require_server(self):
        if self.server is None:
            raise CommandError("NBD server not running")

    def _backend(self, device, node):
        """A device follows its top; a device's top node too (QEMU moves the export's
        parent link onto a new overlay); any other node stays where it is."""
        table = self.core.devices
        owner = table.device(node) or table.device(device or "")
        if owner is None:
            try:
                image = table.lookup(device, node)
            except CommandError:
                raise CommandError("Cannot find device='%s' nor node-name='%s'"
                                   % (device or "", node)) from None
            owner = table.device_of(image)
            if owner is None:
                return BlockBackend(image=image)
        return BlockBackend(device=owner)

    def _add(self, export, bitmaps):
        if len(export.name) > MAX_NAME:
            raise CommandError("export name '%s' too long" % export.name)
        with self._lock:
            if any(e.id == export.id for e in self._exports):
                raise CommandError("Block export id '%s' is already in use" % export.id)
            if self.find(export.name) is not None:
                raise CommandError("NBD server already has export named '%s'" % export.name)
            export.bitmaps = export_bitmaps.resolve(self.core.devices, export.backend.image,
                                                    bitmaps, export.writable)
            export_bitmaps.hold(export.bitmaps)
            self._exports.append(export)

    # -- removing -------------------------------------------------------------------
    def nbd_server_remove(self, args):
        with self._lock:
            self._remove(args["name"], args.get("mode", "safe"))
        return {}

    def block_export_del(self, args):
        with self._lock:
            self._remove(args["id"], args.get("mode", "safe"))
        return {}

    def _remove(self, export_id, mode):
        export = next((e for e in self._exports if e.id == export_id), None)
        if export is None:
            raise CommandError("Export '%s' is not found" % export_id)
        if mode == "safe" and self.server is not None and self.server.clients(export):
            raise CommandError("export '%s' still in use" % export_id, hint=STILL_IN_USE_HINT)
        self._delete(export)

    def _delete(self, export):
        export.shutting_down = True          # no new client picks it from now on
        if self.server is not None:
            self.server.drop_clients(export)
        self._exports.remove(export)
        export_bitmaps.let_go(export.bitmaps)
        self.core.events.publish("BLOCK_EXPORT_DELETED", {"id": export.id})
        self._run_pending()

    def when_unused(self, image, callback):
        """Run ``callback`` now, or once the last export of ``image`` is gone (QEMU: an
        export holds its node; a backup's scratch image outlives the job while exported)."""
        with self._lock:
            if self._exported(image):
                self._pending.append((image, callback))
                return
        callback()

    def _exported(self, image):
        return any(export.backend.image is image for export in self._exports)

    def _run_pending(self):
        ready = [(image, cb) for image, cb in self._pending if not self._exported(image)]
        self._pending = [item for item in self._pending if item not in ready]
        for _image, callback in ready:
            callback()

    # -- queries --------------------------------------------------------------------
    def query(self, args=None):
        with self._lock:
            return [export.info() for export in reversed(self._exports)]

    def query_details(self, args=None):
        """``x-blockmon-query-exports``: what ``info block-exports`` shows."""
        with self._lock:
            server = self.server
            result = []
            for export in self._exports:
                entry = dict(export.info(), name=export.name, writable=export.writable,
                             device=export.backend.device.name if export.backend.device else None)
                entry["clients"] = server.clients(export) if server is not None else []
                result.append(entry)
            return {"server": server.description if server is not None else None,
                    "exports": result}


_ADDRESS_TYPES = ("inet", "unix", "vsock", "fd")


def legacy_address(addr):
    """QAPI SocketAddressLegacy ({"type", "data"}) -> {"type", "host", "port"} or {"type", "path"}."""
    if "type" not in addr:
        raise CommandError("Parameter 'addr.type' is missing")
    kind = addr["type"]
    if not isinstance(kind, str):
        raise CommandError("Invalid parameter type for 'addr.type', expected: string")
    if kind not in _ADDRESS_TYPES:
        raise CommandError("Parameter 'addr.type' does not accept value '%s'" % kind)
    if "data" not in addr:
        raise CommandError("Parameter 'addr.data' is missing")
    data = addr["data"]
    if not isinstance(data, dict):
        raise CommandError("Invalid parameter type for 'addr.data', expected: object")
    for member in addr:
        if member not in ("type", "data"):
            raise CommandError("Parameter 'addr.%s' is unexpected" % member)
    if kind == "unix":
        return {"type": "unix", "path": _member(data, "path")}
    if kind == "inet":
        return {"type": "inet", "host": _member(data, "host"), "port": _member(data, "port")}
    raise CommandError("blockmon serves NBD on inet and unix sockets only, not %s" % kind)


def _member(data, name):
    if name not in data:
        raise CommandError("Parameter 'addr.data.%s' is missing" % name)
    if not isinstance(data[name], str):
        raise CommandError("Invalid parameter type for 'addr.data.%s', expected: string" % name)
    return data[name]


# -- the QMP handlers the command table names: handler(core, arguments) ---------------------
def nbd_server_start(core, args):
    if "tls-creds" in args or "tls-authz" in args:
        raise CommandError("TLS is not supported by blockmon's NBD server")
    return core.exports.start_server(args)


def nbd_server_stop(core, args):
    return core.exports.stop_server(args)


def nbd_server_add(core, args):
    return core.exports.nbd_server_add(args)


def nbd_server_remove(core, args):
    return core.exports.nbd_server_remove(args)


def block_export_add(core, args):
    for index, entry in enumerate(args.get("bitmaps", [])):
        check_bitmap_or_str(entry, "bitmaps[%d]" % index)
    if "iothread" in args:
        raise CommandError("blockmon has no iothreads")
    return core.exports.block_export_add(args)


def block_export_del(core, args):
    return core.exports.block_export_del(args)


def query_block_exports(core, args):
    return core.exports.query(args)


def query_exports_details(core, args):
    return core.exports.query_details(args)
