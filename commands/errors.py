"""The one place that maps errors to QMP error classes.

    CommandError (class_, desc)     raised by the command core and argument checking
      BareError (text)              HMP prints ``text`` as is, without "Error: " (QEMU's commit)
        QemuIoFailed (text)         a qemu-io command that failed
    images.errors.BlockError tree   raised by the block layer

``qmp_error(exc)`` turns either into ``{"class": ..., "desc": ...}``.  The console
prints ``Error: <desc>``; the QMP server sends ``{"error": qmp_error(exc)}``.
"""
from images.errors import BlockError, JobError

GENERIC = "GenericError"
COMMAND_NOT_FOUND = "CommandNotFound"
DEVICE_NOT_ACTIVE = "DeviceNotActive"
DEVICE_NOT_FOUND = "DeviceNotFound"


class CommandError(Exception):
    """A command refused with a QMP error class and a one-line description."""

    def __init__(self, desc: str, class_: str = GENERIC, hint: str = None):
        super().__init__(desc)
        self.desc = desc
        self.class_ = class_
        self.hint = hint        # QEMU's error_append_hint: a second line HMP prints, QMP does not


class BareError(CommandError):
    """An error HMP prints as ``text``, without QEMU's "Error: " prefix (HMP ``commit``
    prints its errors that way); QMP sends its text without the last newline."""

    def __init__(self, text: str, class_: str = GENERIC):
        super().__init__(text.rstrip("\n"), class_)
        self.text = text


class QemuIoFailed(BareError):
    """A qemu-io command that ran and failed (``read -P`` mismatch, bad argument, I/O error).

    HMP prints ``text`` exactly as qemu-io would and counts the command as failed;
    QMP sends a GenericError whose desc is that text without its last newline.
    """


def qmp_error(exc: Exception) -> dict:
    """The QMP error object for a CommandError or a block-layer error."""
    if isinstance(exc, CommandError):
        return {"class": exc.class_, "desc": exc.desc}
    if isinstance(exc, JobError) and exc.not_found:
        return {"class": DEVICE_NOT_ACTIVE, "desc": exc.desc}
    if isinstance(exc, BlockError):
        return {"class": GENERIC, "desc": exc.desc}
    raise TypeError("not a command error: %r" % (exc,))
