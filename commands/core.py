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

from .block_backend import BlockBackend
from .devices import DeviceTable
from .exports import ExportTable
from .qmp_args import validate_arguments
from .table import find_qmp_command, handler_function, qmp_command_names


class BlockCore:
    """The devices, the jobs and the event bus of one blockmon process; QMP commands
    run through ``execute`` (see commands/qmp_handlers.py for what each one does)."""

    def __init__(self, events=None, nbd_server_factory=None):
        self.events = events or EventBus()
        self.devices = DeviceTable()
        # The monitor provides the NBD server (sockets live there); see commands.exports.
        self.exports = ExportTable(self, nbd_server_factory)
        self.jobs_registry = JobRegistry()
        self.quit_requested = threading.Event()
        self.closing = False        # set by shutdown(); no job starts afterwards
        self._shutdown_lock = threading.Lock()

    # -- the entry point --------------------------------------------------------
    def execute(self, name, arguments=None):
        """Run QMP command ``name`` through its command-table entry."""
        arguments = dict(arguments or {})
        validate_arguments(name, arguments)     # CommandNotFound for a name not in the table
        result = handler_function(find_qmp_command(name))(self, arguments)
        return {} if result is None else result

    def handled_command_names(self):
        """The QMP commands whose handler resolves (a test keeps it equal to the table)."""
        return sorted(name for name in qmp_command_names()
                      if callable(handler_function(find_qmp_command(name))))

    # -- devices ----------------------------------------------------------------
    def add_drive(self, device, path, format=None, node_name=None, read_only=False,
                  locking=True):
        return self.devices.add_drive(device, path, format=format, node_name=node_name,
                                      read_only=read_only, locking=locking)

    def device_names(self):
        return [dev.name for dev in self.devices.devices()]

    def node_names(self):
        return self.devices.node_names()

    def backend(self, name):
        """The guest I/O path of a device (following its top) or of a node."""
        device = self.devices.device(name)
        if device is not None:
            return BlockBackend(device=device)
        return BlockBackend(image=self.active_image(name))

    def active_image(self, name):
        return self.devices.lookup(name, name)

    # -- jobs -------------------------------------------------------------------
    def jobs(self):
        return self.jobs_registry.jobs()

    def job_ids(self):
        return [job.id for job in self.jobs()]

    def find_job(self, job_id):
        return self.jobs_registry.find(job_id)

    def wait_jobs(self, job_id=None, timeout=None):
        jobs = [self.find_job(job_id)] if job_id is not None else self.jobs()
        return all(job.wait(timeout) for job in jobs)

    def shutdown(self, reason=None):
        """Announce SHUTDOWN, cancel running jobs (images stay valid, backing references
        unchanged), flush and close every image; returns the ids of the cancelled jobs.
        ``reason`` is SHUTDOWN's (a signal: "host-signal"); calls are serialised."""
        with self._shutdown_lock:
            return self._shutdown(reason)

    def _shutdown(self, reason):
        with self.devices.graph_lock:
            # Job starts hold the graph lock: none is half done now, and none starts
            # later, so every job is in the list cancelled below.
            already_closing, self.closing = self.closing, True
        if not already_closing:
            # QEMU's event: a quit command is "host-qmp-quit"; the end of the console
            # or of a script is the closest thing QEMU has to closing its window.
            if reason is None:
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
        self.exports.shutdown()     # clients go before the images close under them
        for image in self.devices.all_images():
            if not image.read_only:
                image.flush()
        self.devices.close_all()
        return cancelled
