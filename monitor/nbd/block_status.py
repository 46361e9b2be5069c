"""NBD_CMD_BLOCK_STATUS answers: the extents of one request for each meta context.

``base:allocation`` and ``qemu:allocation-depth`` come from one walk of the export's
chain (``BlockBackend.status_above``), made at most once per request;
``qemu:dirty-bitmap:NAME`` from the exported bitmap (``commands.export_bitmaps``).
Neighbouring runs with one value are merged; REQ_ONE asks for a single extent.
"""
from commands import export_bitmaps
from commands.block_backend import allocation_depth, reads_as_zero

from . import protocol as p

MAX_EXTENTS = 128 * 1024            # per BLOCK_STATUS chunk (QEMU sends at most 1 MiB of them)


class BlockStatus:
    """One request's answers: ``extents(context name)`` -> [(length, flags)]."""

    def __init__(self, backend, export, offset, length, only_one):
        self.backend, self.offset, self.length = backend, offset, length
        self.only_one = bool(only_one)
        self.bitmaps = dict(export.bitmaps)
        self._runs = None

    def extents(self, name):
        if name in self.bitmaps:
            return export_bitmaps.extents(self.bitmaps[name], self.offset, self.length,
                                          1 if self.only_one else MAX_EXTENTS)
        if self._runs is None:
            self._runs = self.backend.status_above(self.offset, self.length)
        value = allocation_depth if name == p.CONTEXT_ALLOCATION_DEPTH else base_allocation
        return merged_extents(self._runs, value, self.only_one)


def base_allocation(run) -> int:
    """base:allocation's flags of a run."""
    return p.NBD_STATE_HOLE | p.NBD_STATE_ZERO if reads_as_zero(run.kind) else 0


def merged_extents(runs, value, only_one):
    """(length, flags) descriptors, neighbours with one value merged, at most MAX_EXTENTS."""
    extents = []
    for run in runs:
        flags = value(run)
        if extents and extents[-1][1] == flags:
            extents[-1][0] += run.length
        else:
            if len(extents) >= (1 if only_one else MAX_EXTENTS):
                break
            extents.append([run.length, flags])
    return [(n, f) for n, f in extents]
