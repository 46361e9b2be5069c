"""The QMP-shaped command core: every operation implemented once.

``BlockCore.execute(name, arguments)`` validates the arguments against the command
table's QMP schema, runs the handler and returns the JSON-able ``return`` value,
or raises ``CommandError`` / ``images.errors.BlockError`` (mapped to QMP classes by
``commands.errors.qmp_error``).  The console's HMP adapters, the QMP server and
``human-monitor-command`` all come through here.
"""
import threading

from images.errors import JobError
from images.events import EventBus
from images.jobs.registry import JobRegistry

from . import block_info, block_nodes
from .block_stream import start_stream
from .devices import DeviceTable
from .errors import QemuIoFailed
from .hmp import HmpInterpreter
from .mirror import blockdev_mirror, drive_mirror
from .qemu_io import run_qemu_io
from .qmp_args import validate_arguments
from .snapshot import snapshot_sync
from .table import qmp_command_names

VERSION = (7, 2, 0)
PACKAGE = "blockmon 0.1.0"


class BlockCore:
    def __init__(self, events=None):
        self.events = events or EventBus()
        self.devices = DeviceTable()
        self.jobs_registry = JobRegistry()
        self.quit_requested = threading.Event()
        self.closing = False        # set by shutdown(); no job starts afterwards
        self._handlers = {
            "qmp_capabilities": lambda args: {},
            "query-version": self._query_version,
            "query-commands": self._query_commands,
            "query-block": self._query_block,
            "query-block-jobs": self._query_block_jobs,
            "block-stream": lambda args: start_stream(self, args),
            "drive-mirror": lambda args: drive_mirror(self, args),
            "blockdev-mirror": lambda args: blockdev_mirror(self, args),
            "blockdev-add": lambda args: block_nodes.blockdev_add(self, args),
            "blockdev-del": lambda args: block_nodes.blockdev_del(self, args),
            "query-named-block-nodes": lambda args: block_nodes.query_named_block_nodes(self, args),
            "block-job-set-speed": lambda a: self._job(a["device"]).set_speed(a["speed"]),
            "block-job-cancel": lambda a: self._job(a["device"]).cancel(a.get("force", False)),
            "block-job-pause": lambda a: self._job(a["device"]).pause(),
            "block-job-resume": lambda a: self._job(a["device"]).resume(),
            "block-job-complete": lambda a: self._job(a["device"]).complete(),
            "block-job-finalize": lambda a: self._job(a["id"]).finalize(),
            "block-job-dismiss": lambda a: self._job(a["id"]).dismiss(),
            "job-dismiss": lambda a: self._job(a["id"]).dismiss(),   # QEMU 3.0's generic twin
            "blockdev-snapshot-sync": lambda args: snapshot_sync(self, args),
            "human-monitor-command": self._human_monitor_command,
            "x-blockmon-qemu-io": self._qemu_io,
            "x-blockmon-block-map": self._block_map,
            "quit": self._quit,
        }

    # -- the entry point --------------------------------------------------------
    def execute(self, name, arguments=None):
        arguments = dict(arguments or {})
        # An unknown name is CommandNotFound here; the table and the handlers agree (a test).
        validate_arguments(name, arguments)
        result = self._handlers[name](arguments)
        return {} if result is None else result

    def handled_command_names(self):
        """The QMP commands this core has handlers for (a test keeps it equal to the table)."""
        return sorted(self._handlers)

    # -- devices ----------------------------------------------------------------
    def add_drive(self, device, path, format=None, node_name=None, read_only=False):
        return self.devices.add_drive(device, path, format=format, node_name=node_name,
                                      read_only=read_only)

    def device_names(self):
        return [dev.name for dev in self.devices.devices()]

    def node_names(self):
        return self.devices.node_names()

    def active_image(self, name):
        return self.devices.lookup(name, name)

    # -- jobs -------------------------------------------------------------------
    def jobs(self):
        return self.jobs_registry.jobs()

    def job_ids(self):
        return [job.id for job in self.jobs()]

    def _job(self, job_id):
        return self.jobs_registry.find(job_id)

    def wait_jobs(self, job_id=None, timeout=None):
        jobs = [self._job(job_id)] if job_id is not None else self.jobs()
        return all(job.wait(timeout) for job in jobs)

    def shutdown(self):
        """Announce SHUTDOWN, cancel running jobs (images stay valid, backing references
        unchanged), flush and close every image; returns the ids of the cancelled jobs."""
        with self.devices.graph_lock:
            # Job starts hold the graph lock: none is half done now, and none starts
            # later, so every job is in the list cancelled below.
            already_closing, self.closing = self.closing, True
        if not already_closing:
            # QEMU's event: a quit command is "host-qmp-quit"; the end of the console
            # or of a script is the closest thing QEMU has to closing its window.
            reason = "host-qmp-quit" if self.quit_requested.is_set() else "host-ui"
            self.events.publish("SHUTDOWN", {"guest": False, "reason": reason})
        cancelled = []
        for job in self.jobs():
            if job.status not in ("concluded", "null"):
                try:
                    job.cancel(force=True)
                    cancelled.append(job.id)
                except JobError:  # it finished meanwhile and refuses the verb; it ends anyway
                    pass
        for job in self.jobs():
            job.wait(timeout=30)
        for image in self.devices.all_images():
            if not image.read_only:
                image.flush()
        self.devices.close_all()
        return cancelled

    # -- queries ----------------------------------------------------------------
    def _query_version(self, args):
        major, minor, micro = VERSION
        return {"qemu": {"major": major, "minor": minor, "micro": micro}, "package": PACKAGE}

    def _query_commands(self, args):
        return [{"name": name} for name in qmp_command_names()]

    def _query_block(self, args):
        return [block_info.device_info(dev) for dev in self.devices.devices()]

    def _query_block_jobs(self, args):
        return [job.info() for job in self.jobs()]

    def _block_map(self, args):
        return block_info.block_map(self.active_image(args["device"]))

    # -- guest and human paths ----------------------------------------------------
    def _human_monitor_command(self, args):
        result = HmpInterpreter(self).run_line(args["command-line"])
        return result.output.replace("\r\n", "\n").replace("\n", "\r\n")

    def _qemu_io(self, args):
        device = self.devices.device(args["device"])
        if device is None:  # a node name: no device switch can race with it
            output, ok = run_qemu_io(self.active_image(args["device"]), args["command"])
        else:
            with device.io_lock:
                output, ok = run_qemu_io(device.guest_image(), args["command"])
        if not ok:
            raise QemuIoFailed(output)
        return output

    def _quit(self, args):
        self.quit_requested.set()
        return {}
