"""The one start/finish path of every job-starting command (QEMU's block_job_create).

``start_block_job(core, args, kind)`` does what all block jobs share, in QEMU's
order: refuse while shutting down, the kind's own early argument checks, the
device lookup, the kind's plan (which nodes it op-blocks), the busy check of those
nodes, the kind's late checks, the default job id (the device's name), the common
options (``speed``, ``on-error``, ``auto-finalize``, ``auto-dismiss``), the op
blockers, registering the job (its id checks, then 'created', then the speed
check, as QEMU's job_create) and the start.  When the job ends, ``_finished``
releases the blockers and runs the kind's clean-up.  ``stream`` uses it now;
mirror, commit and backup plug in a ``JobKind`` of their own.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional

from .errors import CommandError


@dataclass
class JobPlan:
    """What one job-starting command contributes once the device is known."""

    held: List[object]                               # nodes to op-block, top first
    create: Callable[..., object]                    # create(id, events, on_finished, **common)
    late_check: Optional[Callable[[], None]] = None  # checks QEMU makes after the busy check
    cleanup: Optional[Callable[[object], None]] = None   # after the blockers are released


@dataclass(frozen=True)
class JobKind:
    """A job-starting command: its type name (op blockers), early checks and plan."""

    job_type: str
    plan: Callable[[object, object, str, dict], JobPlan]     # plan(devices, top, device, args)
    early_check: Optional[Callable[[dict], None]] = None


def common_options(args: dict) -> dict:
    """The options every block job takes, with QEMU's defaults."""
    return {"speed": args.get("speed", 0), "on_error": args.get("on-error", "report"),
            "auto_finalize": args.get("auto-finalize", True),
            "auto_dismiss": args.get("auto-dismiss", True)}


def start_block_job(core, args: dict, kind: JobKind) -> dict:
    with core.devices.graph_lock:
        # Job starts hold the graph lock: shutdown() sees every job that started.
        return _start(core, args, kind)


def _start(core, args: dict, kind: JobKind) -> dict:
    if core.closing:
        raise CommandError("Cannot start a block job: blockmon is shutting down")
    if kind.early_check is not None:
        kind.early_check(args)
    table, device = core.devices, args["device"]
    top = table.lookup(device, device)
    plan = kind.plan(table, top, device, args)
    for image in plan.held:
        table.check_not_busy(image)
    if plan.late_check is not None:
        plan.late_check()
    job = plan.create(default_job_id(table, top, args), core.events,
                      lambda finished: _finished(table, finished, plan), **common_options(args))
    table.block(plan.held, kind.job_type)
    try:
        core.jobs_registry.add(job)
    except Exception:
        table.unblock(plan.held)
        raise
    job.start()
    return {}


def default_job_id(table, top, args: dict) -> str:
    """The given job-id, else the name of the device whose top the job works on."""
    job_id = args.get("job-id")
    if job_id is None:
        owner = table.device_of(top)
        job_id = owner.name if owner is not None else ""
    return job_id


def _finished(table, job, plan: JobPlan) -> None:
    """Every job's clean-up: release the op blockers, then the kind's own."""
    table.unblock(plan.held)
    if plan.cleanup is not None:
        plan.cleanup(job)
