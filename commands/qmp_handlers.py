"""The QMP commands' handlers: ``handler(core, arguments) -> JSON-able result``.

The command table (``commands.table.QMP_COMMANDS``) names each command's handler
here by reference; ``BlockCore.execute`` validates the arguments against the
entry's schema and calls it.  Job-starting commands live in their own modules
(``block_stream``, later mirror, commit, backup) on ``commands.block_jobs``.
"""
from images.errors import JobError

from . import block_info
from .errors import CommandError, QemuIoFailed
from .hmp import HmpInterpreter
from .qemu_io import run_qemu_io
from .table import qmp_command_names

VERSION = (7, 2, 0)
PACKAGE = "blockmon 0.1.0"


def qmp_capabilities(core, args):
    return {}


def query_version(core, args):
    major, minor, micro = VERSION
    return {"qemu": {"major": major, "minor": minor, "micro": micro}, "package": PACKAGE}


def query_commands(core, args):
    return [{"name": name} for name in qmp_command_names()]


def query_block(core, args):
    return [block_info.device_info(dev) for dev in core.devices.devices()]


def query_block_jobs(core, args):
    return [job.info() for job in core.jobs()]


# -- job verbs: QEMU's block-job-* take the job id as "device", job-* as "id" ---------------
def block_job_set_speed(core, args):
    return core.find_job(args["device"]).set_speed(args["speed"])


def block_job_cancel(core, args):
    return core.find_job(args["device"]).cancel(args.get("force", False))


def block_job_pause(core, args):
    return core.find_job(args["device"]).pause()


def block_job_resume(core, args):
    return core.find_job(args["device"]).resume()


def block_job_complete(core, args):
    return core.find_job(args["device"]).complete()


def job_finalize(core, args):
    return core.find_job(args["id"]).finalize()


def job_dismiss(core, args):
    return core.find_job(args["id"]).dismiss()


# -- the generic job-* commands (job-qmp.c): any job by "id" ------------------------------
def _generic_job(core, args):
    """find_job_locked: its miss is a GenericError 'Job not found' (the block-job-* ones
    say DeviceNotActive 'Block job ... not found')."""
    try:
        return core.find_job(args["id"])
    except JobError as err:
        if err.not_found:
            raise CommandError("Job not found") from err
        raise


def _generic_verb(verb):
    def handler(core, args):
        job = _generic_job(core, args)
        try:
            return verb(job)
        except JobError as err:
            if err.not_found:       # the job ended between the lookup and the verb
                raise CommandError("Job not found") from err
            raise
    handler.__doc__ = "job-qmp.c's job-%s." % verb.__name__.lstrip("_")
    return handler


def _pause(job):
    return job.pause()


def _resume(job):
    return job.resume()


def _cancel(job):
    return job.cancel(True)        # job_user_cancel(job, true, ...): always a force cancel


def _complete(job):
    return job.complete()


def _finalize(job):
    return job.finalize()


def _dismiss(job):
    return job.dismiss()


generic_job_pause = _generic_verb(_pause)
generic_job_resume = _generic_verb(_resume)
generic_job_cancel = _generic_verb(_cancel)
generic_job_complete = _generic_verb(_complete)
generic_job_finalize = _generic_verb(_finalize)
generic_job_dismiss = _generic_verb(_dismiss)


def query_jobs(core, args):
    """JobInfo: QEMU's member order; progress is offset of len (job_query_single)."""
    infos = []
    for job in core.jobs():
        info = job.info()
        entry = {"current-progress": info["offset"], "status": info["status"],
                 "total-progress": info["len"], "type": info["type"], "id": info["device"]}
        if info.get("error") is not None:
            entry["error"] = info["error"]
        infos.append(entry)
    return infos


# -- guest and human paths ------------------------------------------------------------------
def human_monitor_command(core, args):
    result = HmpInterpreter(core).run_line(args["command-line"])
    return result.output.replace("\r\n", "\n").replace("\n", "\r\n")


def qemu_io(core, args):
    # The same guest path as NBD clients: the device's current top, counted in blockstats.
    output, ok = run_qemu_io(core.backend(args["device"]), args["command"])
    if not ok:
        raise QemuIoFailed(output)
    return output


def query_blockstats(core, args):
    return [{"device": dev.name, "node-name": dev.top.node_name, "stats": dev.stats.snapshot()}
            for dev in core.devices.devices()]


def block_map(core, args):
    return block_info.block_map(core.active_image(args["device"]))


def quit(core, args):
    core.quit_requested.set()
    return {}
